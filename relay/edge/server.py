"""The edge process: agent listener, sessions, TCP endpoints, drain on shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay import __version__
from relay.accepting import LimitWatch
from relay.admin import AdminServer
from relay.api_client import ApiClient
from relay.certs.local_ca import LocalCA, edge_certificate, fingerprint_sha256
from relay.cluster.claims import kind_refused, rewrite_refused
from relay.cluster.place import WorkerPlace
from relay.config import EdgeConfig, config_change, node_name, parse_host_port
from relay.control.api import ControlPlane, create_app
from relay.control.for_edge import EdgeControl, LocalControl, RemoteControl
from relay.control.store import Store, TokenRecord, token_allows_bind
from relay.control.tokens import load_or_create_pepper
from relay.edge import members
from relay.edge.access_log import AccessLog, Output, open_output
from relay.edge.account_limits import AccountLimits, Place
from relay.edge.auth_guard import AuthGuard, source_of
from relay.edge.bind_refusals import BURST, PER_SECOND, RefusedBinds, Verdict
from relay.edge.coalesced import Coalesced
from relay.edge.control_pace import AccountPaces, account_burst
from relay.edge.control_view import ApiFailureGuard, EdgeLiveView
from relay.edge.endpoint_series import EndpointSeries
from relay.edge.live_reservations import LiveReservations, reservation_refusal
from relay.edge.members import is_live, takes_visitors
from relay.edge.metrics import EdgeMetrics
from relay.edge.ports import PortAllocator
from relay.edge.registry import Holder, InMemoryRegistry
from relay.edge.routes import MAX_HOSTNAME, HostEndpoint, HostRoutes
from relay.edge.session import AgentSession
from relay.edge.tcp import Refuse, TcpEndpoint
from relay.edge.worker import EdgeWorker
from relay.errors import (
    AccountSuspended,
    BindError,
    BindNotAllowed,
    ConfigError,
    ControlUnavailable,
    DataDirError,
    EndpointAlreadyBound,
    ExpiredToken,
    ListenError,
    NameReserved,
    PortRangeExhausted,
    PortUnavailable,
    RelayError,
    RevokedToken,
    TooManyEndpoints,
)
from relay.logs import cut, use_format, use_level
from relay.protocol import MAX_HOST_HEADER, Bind, is_host_header_value
from relay.secret_files import read_owner_only_file
from relay.tls import server_context
from relay.tlslink import Listener, serve_links

if TYPE_CHECKING:
    from relay.edge.cluster import ClusterNode

log = logging.getLogger("relay.edge")


def open_store(data_dir: Path, url: str = "") -> Store:
    """The store at ``url`` (PostgreSQL for deployments), or by default SQLite's
    ``relay.db`` in the data directory."""
    if url:
        return Store.open(url)
    database = data_dir / "relay.db"
    try:
        # Token hashes and the audit log are nobody else's business: create the file
        # owner-only before SQLite does (SQLite gives its -wal/-shm files the same mode).
        os.close(os.open(database, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(database, 0o600)
    except OSError as exc:
        raise DataDirError(f"cannot create {database}: {exc}") from None
    return Store.open(f"sqlite:///{database}")


def _remote_control(config: EdgeConfig, loop: asyncio.AbstractEventLoop) -> RemoteControl:
    """The link to ``config.control_url``, with the edge's API key read from its file."""
    assert config.control_key_file is not None
    try:
        # Owner-only, as any key file: an API key others can read is everyone's.
        key = read_owner_only_file(config.control_key_file).decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"control_key_file {config.control_key_file} is not an API key") from None
    ca = str(config.control_ca_file) if config.control_ca_file is not None else None
    control = RemoteControl(ApiClient(config.control_url, key, timeout=5, ca_file=ca))
    control.start(loop)
    return control


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data directory owner-only, and make an existing one owner-only too: it
    holds the pepper, the CA key and the database."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if data_dir.stat().st_mode & 0o077:
            log.warning("data directory %s was readable by others; now 0700", data_dir)
            os.chmod(data_dir, 0o700)
    except OSError as exc:
        raise DataDirError(f"cannot create data directory {data_dir}: {exc}") from None


def prepare_shared_files(config: EdgeConfig) -> None:
    """What the workers of one edge share, made once before they start (they only read
    it): the data directory, the pepper and the database's schema (unless a control
    plane elsewhere has them), the local CA and the agent-link certificate."""
    prepare_data_dir(config.data_dir)
    if not config.control_url:
        load_or_create_pepper(config.data_dir)
        open_store(config.data_dir, config.store).close()
    if config.tls_cert is None or config.tls_key is None:
        LocalCA.load_or_create(config.data_dir)
        host, _ = config.listen_address()
        names, ips = _certificate_names(host, config)
        edge_certificate(config.data_dir, names, ips)


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did: ``applied`` the live keys that changed, ``kept`` the changed keys
    that need a restart (their running value stays), ``renewed`` the names whose
    certificate was issued again from the operator's files; ``refused``: why nothing
    changed at all."""

    applied: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    renewed: tuple[str, ...] = ()
    refused: RelayError | None = None


class Edge:
    #: The checks of live sessions' credentials that :meth:`credentials_ended` asks for,
    #: one at a time (made at the first; a class attribute so tests can build an Edge
    #: without listeners).
    _credentials_checks: Coalesced | None = None

    def __init__(self, config: EdgeConfig, worker: WorkerPlace | None = None) -> None:
        """``worker``: this edge is one worker of several (relay/edge/worker.py)."""
        self.config = config
        #: What this PoP calls itself to agents (``AuthOk.pop``) and, in a cluster, to
        #: other nodes: worked out once (a ``gethostname``), the same in every worker.
        self.pop_name = node_name(config.node_id, config.listen)
        self.sessions: set[AgentSession] = set()
        self.endpoints: dict[str, TcpEndpoint | HostEndpoint] = {}  # endpoint_id -> endpoint
        self.by_key: dict[str, TcpEndpoint | HostEndpoint] = {}
        self.http_routes: HostRoutes[HostEndpoint] = HostRoutes()
        self.sni_routes: HostRoutes[HostEndpoint] = HostRoutes()
        self.worker = EdgeWorker(self, worker) if worker is not None else None
        #: This edge as a node of a cluster (relay/edge/cluster.py), with cluster_redis.
        self.cluster: ClusterNode | None = None
        if config.cluster_redis:
            from relay.edge.cluster import ClusterNode  # brings Redis's client: only then

            self.cluster = ClusterNode(self)
        self.web: Any = None  # relay.edge.web.WebFronts once started
        #: Reads the configuration file again and applies it, as SIGHUP does (set by the
        #: command that started the edge: it knows the file and the flags); the API's
        #: reload calls it on every node.
        self.reloader: Callable[[], ReloadResult] | None = None
        self.registry = InMemoryRegistry()
        self.ports = PortAllocator(config.tcp_ports)
        self.server: Listener | None = None
        self.address: tuple[str, int] | None = None
        self.ca_file: Path | None = None
        self.fingerprint = ""
        self._stopping = False
        #: The store, when the control plane runs in this process (None with control_url).
        self.store: Store | None = None
        #: What verifies tokens and keeps the audit log: this process's store, or a
        #: `relay control` process (relay/control/for_edge.py).
        self.control: EdgeControl | None = None
        self.pepper = b""
        self.tokens: dict[str, TokenRecord] = {}  # token_id -> record, for bind ACLs
        self._credential_watch: asyncio.Task[None] | None = None
        #: Applies reservations made or released later to the live endpoints.
        self.reservations = LiveReservations(self)
        self._limit_watch: LimitWatch | None = None
        # An agent opens its control stream and nothing else: a second open ends the link
        # in the native session, before any stream is allocated for it.
        self._agent_mux = dataclasses.replace(config.mux, max_peer_streams=1)
        self.endpoint_series = EndpointSeries(config.metrics_endpoint_labels)
        self.auth_guard = AuthGuard(
            config.auth_failure_limit, config.auth_failure_window, config.auth_block_time
        )
        self.refused_binds = RefusedBinds()
        self.account_limits = AccountLimits(*_account_limits(config))
        self.account_paces = AccountPaces(account_burst(config.max_endpoints_per_account))
        self.metrics = EdgeMetrics(self)
        self.admin: AdminServer | None = None
        self.api_plane: ControlPlane | None = None  # the REST API's, when this edge serves it
        self.access_log: AccessLog | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        prepare_data_dir(config.data_dir)
        loop = asyncio.get_running_loop()
        if config.control_url:
            self.control = _remote_control(config, loop)
        else:
            self.pepper = load_or_create_pepper(config.data_dir)
            self.store = open_store(config.data_dir, config.store)
            local = LocalControl(self.store, self.pepper)
            local.start(loop)
            self.control = local
        # The reservation feed's head, before any agent binds (its first read checks
        # whatever is live then, so a late answer misses nothing).
        self.reservations.changed(announce=False)
        host, port = config.listen_address()
        if config.tls_cert is not None and config.tls_key is not None:
            cert_file, key_file = config.tls_cert, config.tls_key
        else:
            ca = LocalCA.load_or_create(config.data_dir)
            self.ca_file = ca.ca_pem_path
            names, ips = _certificate_names(host, config)
            cert_file, key_file = edge_certificate(config.data_dir, names, ips)
        self.fingerprint = fingerprint_sha256(_leaf_pem(cert_file.read_bytes()))
        ssl_ctx = server_context(cert_file, key_file)
        if self.worker is not None:
            self.worker.start(loop)
        try:
            self.server = await serve_links(
                loop,
                self._new_agent_link,
                host,
                port,
                ssl_context=ssl_ctx,
                handshake_timeout=config.handshake_timeout,
                backlog=1024,
                on_handshake=self._agent_handshake,
                admit=self.admits_agent_from,
                reuse_port=self.worker is not None,
            )
        except OSError as exc:
            raise ListenError.for_address(config.listen, "--listen", exc) from None
        sockname = self.server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        if config.access_log:
            # Before the web fronts: the TLS port decides at start whether its passthrough
            # connections are logged.
            self.access_log = AccessLog(
                config.access_log, config.log_format, _open_access_log(config.access_log)
            )
            self.access_log.start(loop)
        if config.http_listen or config.https_listen:
            from relay.edge.web import WebFronts

            self.web = WebFronts(self, cert_file, key_file)
            await self.web.start()
            if self.worker is not None:
                self.web.http.serve_elsewhere(self.worker)
                if self.web.tls_front is not None:
                    self.web.tls_front.elsewhere = self.worker
        live = EdgeLiveView(self)
        if self.worker is not None:
            self.worker.asks.serve(live)
        if self.cluster is not None:
            self.cluster.asks.serve(live)  # answered with or without an API here
            try:
                await self.cluster.start(loop)
            except OSError as exc:
                raise ListenError.for_address(
                    config.cluster_listen, "--cluster-listen", exc
                ) from None
        self._credential_watch = loop.create_task(self._watch_credentials())
        if config.admin_listen:
            make_api: Callable[[], Any] | None = None
            if self.store is not None:  # with a remote control plane, the API is there
                self.api_plane = plane = ControlPlane(
                    self.store,
                    self.pepper,
                    live=live,
                    guard=ApiFailureGuard(self),
                    credentials_ended=self.credentials_ended,
                    reservations_changed=self.reservations.changed,
                    shared_domains=(config.base_domain,) if config.base_domain else (),
                )
                make_api = functools.partial(create_app, plane)
            self.admin = AdminServer(self.metrics, self.readiness, self.status, api=make_api)
            admin_host, admin_port = parse_host_port(config.admin_listen, what="admin_listen")
            if self.worker is not None and admin_port:
                # The supervisor's is at the port itself, worker i's at the port + 1 + i.
                admin_port += self.worker.index + 1
            await self.admin.start(admin_host, admin_port)
        # TCP endpoints and the HTTP listener are uvloop servers: at the descriptor limit
        # libuv drops their visitors silently. Say so, once per episode.
        self._limit_watch = LimitWatch(loop, what="TCP endpoints and the HTTP listener")

    def admits_agent_from(self, address: object) -> bool:
        """False for a source refused for failing to authenticate (see AuthGuard)."""
        if self.auth_guard.blocked_for(source_of(address)) <= 0:
            return True
        self.metrics.links_refused.labels("source_blocked").inc()
        return False

    def auth_failed(self, session: AgentSession) -> None:
        """A link failed to authenticate: count it against its source, which is refused
        for ``auth_block_time`` once it has failed ``auth_failure_limit`` times."""
        self.count_auth_failure(session.source, f"agent@{session.peer}", "agent links")

    def count_auth_failure(self, source: str, actor: str, what: str) -> None:
        """One failed authentication from ``source`` (agent port or API: one budget)."""
        if not self.auth_guard.failed(source):
            return
        assert self.control is not None
        config = self.config
        log.warning(
            "%s from %s refused for %gs: %d failed authentications within %gs",
            what,
            source,
            config.auth_block_time,
            config.auth_failure_limit,
            config.auth_failure_window,
        )
        self.metrics.auth_blocks.inc()
        self.control.audit(
            actor,
            "auth.block",
            "",
            self.auth_guard.block_detail(source),
        )

    def _agent_handshake(self, ok: bool) -> None:
        self.metrics.tls_handshakes.labels("agent", "ok" if ok else "failed").inc()

    def _new_agent_link(self) -> Any:
        if self._refusal() is not None:
            return Refuse()
        session = AgentSession(self)
        return self._agent_mux.new_link(session, asyncio.get_running_loop(), client=False)

    def _refusal(self) -> str | None:
        if self._stopping:
            reason, why = "draining", "draining"
        elif len(self.sessions) >= self.config.max_sessions:
            reason, why = "full", f"full ({self.config.max_sessions} sessions)"
        else:
            return None
        log.warning("refusing agent link: %s", why)
        self.metrics.links_refused.labels(reason).inc()
        return reason

    def session_started(self, session: AgentSession) -> bool:
        """A link is live (its transport started): count its session from now until
        ``session_ended``. A link whose start failed (the peer reset right after the
        handshake) never gets here, so it cannot hold a place. False: refuse it."""
        if self._refusal() is not None:
            return False
        self.sessions.add(session)
        return True

    async def stop(self) -> None:
        """Drain: no new agents or visitors; GoAway and Restart to every agent; let live
        streams finish until ``drain_timeout``; then close everything."""
        if self._stopping:
            return
        self._stopping = True
        log.info(
            "draining: %d agent session(s); live streams get up to %gs",
            len(self.sessions),
            self.config.drain_timeout,
        )
        if self._credential_watch is not None:
            self._credential_watch.cancel()
        self.reservations.close()
        if self._limit_watch is not None:
            self._limit_watch.close()
        # The admin listener stays up through the drain: /readyz says "draining" to the
        # load balancer, /metrics shows the drain; it closes last.
        if self.server is not None:
            self.server.close()
        if self.web is not None:
            self.web.close()
        for endpoint in list(self.endpoints.values()):
            endpoint.close()
        for session in list(self.sessions):
            session.draining = True  # no visitor is routed to it from now on
        # Visitors accepted or routed just before open their streams in connection_made,
        # a loop turn later: after a GoAway that open would fail (a reset visitor).
        await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.link is not None:
                session.drain()
        deadline = time.monotonic() + self.config.drain_timeout
        while time.monotonic() < deadline and any(s.live_streams() for s in self.sessions):
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.link is not None:
                session.link.close()
        await asyncio.sleep(0.05)  # let the GoAway/close frames reach the sockets
        for session in list(self.sessions):
            if session.link is not None and not session.link.closed:
                session.link.abort()
        if self.web is not None:
            await self.web.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.admin is not None:
            self.admin.close()
        if self.api_plane is not None:
            await self.api_plane.calls.close()
        if self.access_log is not None:
            self.access_log.close()
        if self.worker is not None:
            self.worker.close()
        if self.control is not None:
            await self.control.close()

    # --- reload (SIGHUP) ----------------------------------------------------------------

    def reload(self, new_config: EdgeConfig, *, source: str = "the configuration") -> ReloadResult:
        """Run with ``new_config``'s live settings from now on, without dropping a session or
        a stream: the running listeners, sessions and connections stay as they are, and
        settings that apply when something starts (HTTP limits of a connection, the grace
        of a session that ends) apply to what starts from now on. Settings that need a
        restart keep their running value and are named in one WARNING. What can fail (the
        access log's new file, the operator's certificate files) is done first: if any of
        it fails the reload is refused as a whole, in one ERROR line, and nothing changes.
        An access log file is always reopened (log rotation), and the files issuer's
        certificates always read again (certificate rotation), changed or not."""
        if self._stopping or self.server is None:
            state = "draining" if self._stopping else "not started yet"
            log.warning("reload of %s ignored: the edge is %s", source, state)
            return ReloadResult(refused=ConfigError(f"the edge is {state}"))
        change = config_change(self.config, new_config)
        config = change.config
        try:
            issuer = self.web.prepare_reload(config) if self.web is not None else None
            output = _open_access_log(config.access_log) if config.access_log else None
        except RelayError as err:
            return self._reload_refused(source, err)
        self.config = config
        self.auth_guard.configure(
            config.auth_failure_limit, config.auth_failure_window, config.auth_block_time
        )
        self.account_limits.configure(*_account_limits(config))
        self.account_paces.configure(account_burst(config.max_endpoints_per_account))
        use_level(config.log_level)
        use_format(config.log_format)
        self._reopen_access_log(config, output)
        renewed = self.web.apply_reload(config, issuer) if self.web is not None else []
        if change.kept:
            log.warning(
                "reload of %s: cannot change while the edge runs: %s; restart the edge to "
                "change it",
                source,
                ", ".join(
                    f"{k} (stays {_shown(getattr(config, k))}, asked "
                    f"{_shown(getattr(new_config, k))})"
                    for k in change.kept
                ),
            )
        done = [f"changed {', '.join(change.applied)}" if change.applied else "nothing changed"]
        if change.kept:
            done.append(f"kept {', '.join(change.kept)} (restart to change)")
        if config.access_log not in ("", "-"):
            done.append(f"access log reopened ({config.access_log})")
        if issuer is not None:
            done.append(f"certificate files read again (names re-issued: {len(renewed)})")
        log.info("reloaded %s: %s", source, "; ".join(done))
        return ReloadResult(change.applied, change.kept, renewed=tuple(renewed))

    def reload_from(self, load: Callable[[], EdgeConfig], source: str) -> ReloadResult:
        """:meth:`reload` with the configuration ``load`` makes (the same file and flags
        the edge started with); a configuration that does not load (bad YAML, an unknown
        key, a bad value) is refused as a whole, in one ERROR line."""
        try:
            new_config = load()
        except RelayError as err:
            return self._reload_refused(source, err)
        return self.reload(new_config, source=source)

    def _reload_refused(self, source: str, err: RelayError) -> ReloadResult:
        # One line, whatever the reason says (a YAML error spans several).
        reason = " ".join(err.one_line().split())
        log.error("reload of %s refused, the running configuration stays: %s", source, reason)
        return ReloadResult(refused=err)

    def _reopen_access_log(self, config: EdgeConfig, output: Output | None) -> None:
        if output is None:
            if self.access_log is not None:
                self.access_log.close()
                self.access_log = None
        elif self.access_log is None:
            self.access_log = AccessLog(config.access_log, config.log_format, output)
            self.access_log.start(asyncio.get_running_loop())
        else:
            self.access_log.switch(config.access_log, config.log_format, output)
        logging_on = self.access_log is not None
        for endpoint in self.endpoints.values():
            if isinstance(endpoint, TcpEndpoint):  # its visitors from now on
                endpoint.log_access = logging_on
        if self.web is not None and self.web.tls_front is not None:
            self.web.tls_front.log_access = logging_on  # passthrough visitors from now on

    # --- health -------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """Whether the edge serves: its listeners are bound, its store answers, and it is
        not draining (and why not)."""
        if self._stopping:
            return False, "draining"
        if self.server is None or (
            self.web is None and (self.config.http_listen or self.config.https_listen)
        ):
            return False, "listeners not bound yet"
        try:
            assert self.control is not None
            self.control.ping()
        except Exception as exc:
            what = "control plane" if self.config.control_url else "store"
            return False, f"{what} unreachable: {exc}"
        return True, ""

    def ready(self) -> bool:
        return self.readiness()[0]

    def status(self) -> dict[str, Any]:
        """What `relay status` shows for an edge (the admin listener's /status)."""
        ready, why = self.readiness()
        by_kind: dict[str, int] = {}
        for endpoint in self.endpoints.values():
            by_kind[endpoint.kind] = by_kind.get(endpoint.kind, 0) + 1
        live = [s for s in self.sessions if s.authenticated]
        return {
            "role": "edge",
            "version": __version__,
            "region": self.config.region,
            "worker": self.worker.index if self.worker is not None else None,
            "ready": ready,
            "why": why,
            "sessions": len(live),
            "sessions_limit": self.config.max_sessions,
            "endpoints_by_kind": by_kind,
            "sessions_list": [
                {
                    "id": s.session_id,
                    "peer": s.peer,
                    "token": s.token_id,
                    "endpoints": len(s.endpoints),
                    "rtt_us": int(s.link.session.rtt_us) if s.link is not None else 0,
                    "draining": s.draining,
                }
                for s in sorted(live, key=lambda s: s.session_id)
            ],
            "workers": self.worker.status() if self.worker is not None else None,
            "cluster": self.cluster.status() if self.cluster is not None else None,
            "endpoints": [
                {
                    "url": e.url,
                    "kind": e.kind,
                    "session": e.holder.session.session_id if e.holder.session else None,
                }
                for e in sorted(self.endpoints.values(), key=lambda e: e.url)
            ],
        }

    def certificate_expiry(self) -> float | None:
        """When the first of the edge's https certificates expires (Unix time), if any."""
        certs = self.web.certs if self.web is not None else None
        if certs is None:
            return None
        ends = [end for name in certs.names() if (end := certs.not_after(name)) is not None]
        return min(ends).timestamp() if ends else None

    # --- used by sessions ---------------------------------------------------------------

    async def verify_token(self, token: str, *, peer: str) -> TokenRecord:
        assert self.control is not None
        record = await self.control.verify_token(token, peer=peer, address=_host_of(peer))
        self.tokens[record.id] = record
        return record

    # --- live sessions' credentials ----------------------------------------------------

    async def _watch_credentials(self) -> None:
        """Revoking or expiring a token, or suspending its account, ends its live sessions
        (within 2 s): they hold no credential any more. The control plane is asked once a
        second, one question for all. While it does not answer, live sessions go on: the
        edge has no news that a credential ended (said once per outage).

        Each tick also reads the reservations changed since the last (one more question,
        relay/edge/live_reservations.py): the net for reservations made where this edge
        hears nothing of them at once (another control-plane process, the store itself).
        Not while this edge has no endpoints: nothing live to check, and the first tick
        after a bind reads on from the old mark, a page at a time."""
        unanswered = False
        while True:
            await asyncio.sleep(self.config.credential_check_interval)
            self.reservations.tick()  # a task of its own, if anything is live; it logs itself
            try:
                await self.check_credentials()
            except ControlUnavailable as exc:
                if not unanswered:
                    log.warning("live sessions' credentials cannot be checked: %s", exc)
                unanswered = True
                continue
            except Exception:  # a store hiccup must not end the watch
                log.exception("checking live sessions' credentials failed")
                continue
            if unanswered:
                log.warning("live sessions' credentials are checked again")
                unanswered = False

    def credentials_ended(self, *, announce: bool = True) -> None:
        """A credential ended (through this edge's API, or — ``announce`` False — another
        node of the cluster says so): check live sessions now, not at the next poll.

        One check at a time: a credential that ends while one runs gets one more check
        after it. A bulk revocation (or a flood of events from Redis) is then two queries
        to the control plane per node, not one per credential."""
        if self._credentials_checks is None:
            self._credentials_checks = Coalesced(self.check_credentials, _log_check_failure)
        self._credentials_checks.ask()
        if announce and self.cluster is not None:
            self.cluster.announce({"event": "credentials"})

    async def check_credentials(self) -> None:
        assert self.control is not None
        live = [s for s in self.sessions if s.authenticated and s.token_id is not None]
        if not live:
            return
        ended = await self.control.inactive_tokens({s.token_id for s in live if s.token_id})
        for session in live:
            status = ended.get(session.token_id or "")
            if status is not None:
                self._end_for_credential(session, status)

    async def credential_still_valid(self, session: AgentSession) -> bool:
        """Checked before each bind: a revoked token binds nothing, even between checks."""
        assert self.control is not None and session.token_id is not None
        ended = await self.control.inactive_tokens({session.token_id})
        status = ended.get(session.token_id)
        if status is None:
            return True
        self._end_for_credential(session, status)
        return False

    def _end_for_credential(self, session: AgentSession, status: str) -> None:
        assert self.control is not None
        error: RelayError
        if status == "revoked":
            error = RevokedToken("authtoken has been revoked")
        elif status == "suspended":
            error = AccountSuspended("the authtoken's account is suspended")
        else:
            error = ExpiredToken("authtoken has expired")
        log.warning(
            "session %s (%s): token %s %s; ending the session",
            session.session_id,
            session.peer,
            session.token_id,
            status,
        )
        self.control.audit(
            "edge",
            "session.stop",
            session.token_id or "",
            {"session": session.session_id, "peer": session.peer, "reason": status},
        )
        session.end_reason = status
        session.stop(error.code, str(error))

    def bind_refused(self, session: AgentSession, request: Bind, exc: RelayError) -> None:
        """Refused binds are logged and audited: who asked for which name or port, and
        why not. Past its token's budget (relay/edge/bind_refusals.py) a refusal is
        only counted; the first such refusal is audited as ``bind.flood``."""
        assert self.control is not None
        self.metrics.binds_refused.labels(exc.code).inc()
        verdict = self.refused_binds.refused(session.token_id or "")
        if verdict is not Verdict.AUDIT:
            self.metrics.bind_refusals_unaudited.inc()
            if verdict is Verdict.FLOOD_BEGINS:
                self._flood_begins(session)
            return
        # What the agent asked for, as it asked, but bounded: it is logged and audited.
        target = cut(
            request.domain or request.subdomain or str(request.remote_port or ""), MAX_HOSTNAME
        )
        kind = cut(request.kind, len("https"))
        log.info(
            "session %s: bind of %s %s refused: %s",
            session.session_id,
            kind,
            target or "(any)",
            exc.one_line(),
        )
        self.control.audit(
            f"agent@{session.peer}",
            "bind.refuse",
            session.token_id or "",
            {"kind": kind, "target": target, "code": exc.code, "reason": str(exc)},
        )

    def _flood_begins(self, session: AgentSession) -> None:
        assert self.control is not None
        log.warning(
            "session %s (%s): token %s sent more refused binds than %d at once and %g a "
            "second; further ones are answered and counted "
            "(relay_bind_refusals_unaudited_total), neither logged nor audited, until it "
            "is within that again",
            session.session_id,
            session.peer,
            session.token_id,
            BURST,
            PER_SECOND,
        )
        self.control.audit(
            f"agent@{session.peer}",
            "bind.flood",
            session.token_id or "",
            {"session": session.session_id, "burst": BURST, "per_second": PER_SECOND},
        )

    async def bind(self, session: AgentSession, request: Bind) -> TcpEndpoint | HostEndpoint:
        epoch = self.reservations.epoch
        endpoint = await self._bind(session, request)
        self.reservations.bound(endpoint, epoch)  # checked again if a change came meanwhile
        return endpoint

    async def _bind(self, session: AgentSession, request: Bind) -> TcpEndpoint | HostEndpoint:
        assert session.token_id is not None and session.agent_id is not None
        if len(session.endpoints) >= self.config.max_endpoints_per_session:
            raise TooManyEndpoints(
                f"a session may hold at most {self.config.max_endpoints_per_session} endpoints"
            )
        _check_host_header(request)
        if request.kind in ("http", "https", "tls"):
            return await self._bind_host(session, request)
        if request.kind != "tcp":
            raise BindError(f"endpoint kind {_quoted(request.kind)} is not supported by this edge")
        record = self.tokens[session.token_id]
        port = request.remote_port
        if port:
            await self._check_reserved("tcp", port, record.account_id)
        if port and not token_allows_bind(record, "tcp", port=port):
            raise BindNotAllowed(f"token {record.id} may not bind tcp port {port}")
        holder = Holder(
            session.token_id, session.agent_id, session, session.link_index, request.pool
        )
        claimed = False
        if port:
            key = f"tcp:{port}"
            if key in self.by_key:
                await self._claim(key, holder)
                claimed = True
                existing = self.by_key.get(key)  # again: it may have gone meanwhile
                if existing is not None:
                    return self._take_over(existing, holder, session)
        # A new endpoint from here: its place among its account's is taken first.
        try:
            place = self._take_place(session, "tcp")
        except TooManyEndpoints:
            if claimed:
                self.report(f"tcp:{port}")  # a claim just granted must not outlive it
            raise
        try:
            endpoint = await self._new_tcp(session, record, request, holder, port)
        except BaseException:
            self.account_limits.give_back(place)
            raise
        self.account_limits.held(place, endpoint.endpoint_id)
        return endpoint

    async def _new_tcp(
        self,
        session: AgentSession,
        record: TokenRecord,
        request: Bind,
        holder: Holder,
        port: int,
    ) -> TcpEndpoint:
        """A new TCP endpoint: on ``port``, or on a free port of the range when 0."""
        if port:
            key = f"tcp:{port}"
            try:
                self.ports.reserve(port)
            except PortUnavailable:
                self.report(key)  # a claim just granted must not outlive the refusal
                raise
            candidates = [port]
        else:
            # A reserved port is never handed out at random, not even to its own account
            # (which asks for it by number).
            assert self.control is not None
            reserved = await self.control.reserved_ports()
            free = [p for p in self.ports.candidates() if p not in reserved]
            if not free:
                raise PortRangeExhausted(f"every free port of {self.ports.ports} is reserved")
            candidates = [p for p in free[:32] if token_allows_bind(record, "tcp", port=p)]
            if not candidates:
                raise BindNotAllowed(f"token {record.id} may not bind any port of this edge")
        last_error: OSError | None = None
        for candidate in candidates:
            if candidate != port:
                try:
                    self.ports.reserve(candidate)
                except PortUnavailable:
                    continue
            try:
                await self._claim(f"tcp:{candidate}", holder)
            except EndpointAlreadyBound:
                self.ports.release(candidate)
                if candidate == port:
                    raise
                continue  # another worker's port: try the next
            except BaseException:
                self.ports.release(candidate)
                raise
            claimed = False
            if self.cluster is not None:
                try:
                    claimed = await self.cluster.claim_port(
                        candidate, record.id, session.agent_id, request.pool
                    )
                except BaseException as exc:
                    self.ports.release(candidate)
                    self.report(f"tcp:{candidate}")  # the workers' claim is given up
                    if isinstance(exc, EndpointAlreadyBound) and candidate != port:
                        continue  # another node's port: try the next
                    raise
            try:
                endpoint = await self._listen_tcp(session, holder, candidate)
            except OSError as exc:
                last_error = exc
                continue
            finally:
                if claimed and self.cluster is not None:
                    self.cluster.settle_port(candidate, record.id)
            return endpoint
        raise PortUnavailable(f"cannot listen on tcp port(s) {candidates[:3]}…: {last_error}")

    async def _listen_tcp(
        self, session: AgentSession, holder: Holder, candidate: int
    ) -> TcpEndpoint:
        """Listen on ``candidate``, claimed: the endpoint, registered; OSError (the port
        released, what was claimed for it given up) when it will not bind."""
        if self.cluster is not None and self.cluster.ports is not None:
            self.cluster.ports.give_up(candidate)  # it listened for another node
        endpoint = TcpEndpoint(
            "ep_" + secrets.token_hex(6),
            candidate,
            holder,
            self.config.public_host,
            self.metrics.visitors_refused.labels("tcp", "no_agent"),
        )
        endpoint.log_access = self.access_log is not None
        if self.worker is not None:
            endpoint.hand_off = self.worker.tcp_handed_off
        try:
            await endpoint.listen(self.config.tcp_bind, reuse_port=self.worker is not None)
        except OSError:
            self.ports.release(candidate)
            self.report(endpoint.key)  # what was claimed for it is given up
            raise
        except BaseException:
            endpoint.close()
            self.ports.release(candidate)
            self.report(endpoint.key)
            raise
        # Only now: a port that would not bind must not use up a series.
        endpoint.metric_slot = self.endpoint_series.slot_for(endpoint.url, "tcp")
        self.registry.claim(endpoint.key, holder)
        self.endpoints[endpoint.endpoint_id] = endpoint
        self.by_key[endpoint.key] = endpoint
        session.endpoints[endpoint.endpoint_id] = endpoint
        self.report(endpoint.key)
        log.info("session %s bound %s", session.session_id, endpoint.url)
        return endpoint

    async def _bind_host(self, session: AgentSession, request: Bind) -> HostEndpoint:
        assert session.token_id is not None and session.agent_id is not None
        if self.web is None or (request.kind == "http" and self.web.http_port is None):
            raise BindError(f"this edge serves no {request.kind} endpoints")
        if request.kind in ("https", "tls") and self.web.https_port is None:
            raise BindError(f"this edge serves no {request.kind} endpoints")
        hostname = self._hostname_for(request)
        record = self.tokens[session.token_id]
        owned = await self._check_reserved(request.kind, hostname, record.account_id)
        if not token_allows_bind(
            record,
            request.kind,
            hostname=hostname,
            base_domain=self.config.base_domain,
            reserved=owned,
        ):
            raise BindNotAllowed(
                f"token {record.id} may not bind {request.kind} {hostname}"
                + _acl_hint(hostname, self.config.base_domain)
            )
        family = "http" if request.kind == "http" else "sni"
        self._check_name_owner(hostname, "sni" if family == "http" else "http", record.id)
        pins = await self._pins_under(hostname)
        key = f"{family}:{hostname}"
        # A new endpoint takes its place among its account's before any claim: a claim
        # across workers may move the name here from another worker (whose copy goes),
        # which a refusal after it would lose.
        place = None if key in self.by_key else self._take_place(session, request.kind)
        try:
            return await self._bind_host_placed(session, request, hostname, family, pins, place)
        except BaseException:
            if place is not None:
                self.account_limits.give_back(place)  # nothing if the endpoint was made
            raise

    async def _bind_host_placed(
        self,
        session: AgentSession,
        request: Bind,
        hostname: str,
        family: str,
        pins: dict[str, str | None],
        place: Place | None,
    ) -> HostEndpoint:
        assert self.web is not None
        assert session.token_id is not None and session.agent_id is not None
        record = self.tokens[session.token_id]
        claimed = self.cluster is not None and await self.cluster.claim_name(
            hostname,
            record.id,
            family,
            session.agent_id,
            request.pool,
            request.host_header or "",
            request.kind,
        )
        try:
            if request.kind == "https":
                self.web.check_servable(hostname)  # e.g. an ACME wildcard: RLY_806 now
            holder = Holder(
                session.token_id, session.agent_id, session, session.link_index, request.pool
            )
            key = f"{family}:{hostname}"
            await self._claim(key, holder, request.host_header or None, request.kind)
            try:
                return self._bind_host_claimed(
                    session, request, hostname, family, holder, pins, place
                )
            finally:
                self.report(key)  # what this worker holds now, whether the bind held or not
        finally:
            if claimed and self.cluster is not None:
                # Held (in the cluster's ``owned`` now) or failed: the claim is settled.
                self.cluster.settle_name(hostname, record.id)

    def _take_place(self, session: AgentSession, kind: str) -> Place:
        """A new endpoint's place among its account's (relay/edge/account_limits.py);
        TooManyEndpoints when a member account holds its limit. The account and its role
        are the session's, as its authentication found them."""
        assert session.account_id is not None
        return self.account_limits.take(session.account_id, kind, limited=session.limited)

    def _bind_host_claimed(
        self,
        session: AgentSession,
        request: Bind,
        hostname: str,
        family: str,
        holder: Holder,
        pins: dict[str, str | None],
        place: Place | None,
    ) -> HostEndpoint:
        """``place``: taken for a new endpoint before the claims (None: the name was held
        here then); given back when the name is taken over after all."""
        assert self.web is not None
        key = f"{family}:{hostname}"
        rewrite = request.host_header.encode("latin-1") if request.host_header else None
        existing = self.by_key.get(key)
        if existing is not None:
            if not isinstance(existing, HostEndpoint):
                raise EndpointAlreadyBound(f"{hostname} is bound as another kind of endpoint")
            taken = self._take_over(existing, holder, session, rewrite, request.kind)
            assert isinstance(taken, HostEndpoint)
            taken.pins = pins  # the reservations as they are at this bind
            if place is not None:
                self.account_limits.give_back(place)  # it counts as it did
            return taken
        if place is None:  # held here before the claims, gone since
            place = self._take_place(session, request.kind)
        endpoint = HostEndpoint(
            endpoint_id="ep_" + secrets.token_hex(6),
            kind=request.kind,
            hostname=hostname,
            holder=holder,
            url=self._host_url(request.kind, hostname),
            host_rewrite=rewrite,
            pins=pins,
        )
        try:
            endpoint.metric_slot = self.endpoint_series.slot_for(endpoint.url, endpoint.kind)
            self.registry.claim(endpoint.key, holder)
            (self.http_routes if family == "http" else self.sni_routes).add(endpoint)
        except BaseException:
            self.account_limits.give_back(place)
            raise
        self.endpoints[endpoint.endpoint_id] = endpoint
        self.by_key[endpoint.key] = endpoint
        session.endpoints[endpoint.endpoint_id] = endpoint
        self.account_limits.held(place, endpoint.endpoint_id)
        log.info("session %s bound %s", session.session_id, endpoint.url)
        return endpoint

    def _host_url(self, kind: str, hostname: str) -> str:
        assert self.web is not None
        port = self.web.public_port(kind)
        default = {"http": 80, "https": 443, "tls": 443}[kind]
        suffix = "" if port == default else f":{port}"
        return f"{kind}://{hostname.replace('*', '<any>', 1)}{suffix}"

    async def _claim(
        self, key: str, holder: Holder, rewrite: str | None = None, kind: str | None = None
    ) -> None:
        """With several workers, a name or port is first claimed across them (the
        supervisor's rules; EndpointAlreadyBound when another worker's agent has it, or
        its members there rewrite the Host otherwise than ``rewrite``, or serve the name
        as another ``kind``)."""
        if self.worker is not None:
            await self.worker.claim(key, holder, rewrite, kind)

    def drop_endpoint(self, key: str, agent_id: str | None = None, link: int = 0) -> None:
        """The supervisor gave ``key`` — or, with ``agent_id``, that agent's link ``link``
        — to another worker (it reconnected there): this worker's copy goes, without
        telling the supervisor again."""
        endpoint = self.by_key.get(key)
        if endpoint is None:
            return
        gone = [
            m
            for m in endpoint.members
            if agent_id is None or (m.agent_id == agent_id and m.link == link)
        ]
        if not gone:
            return
        for member in gone:
            if member.session is not None:
                member.session.endpoints.pop(endpoint.endpoint_id, None)
        remaining = [m for m in endpoint.members if m not in gone]
        if remaining:
            endpoint.members = remaining
            endpoint.holder = remaining[0]
            self.registry.promote(endpoint.key, endpoint.holder)
            self.report(endpoint.key)
            return
        log.info("%s moved to another worker", endpoint.url)
        self._remove(endpoint)

    def session_draining(self, session: AgentSession) -> None:
        """``session`` takes no new visitor from now on: the supervisor and the other
        nodes hear it at once, so they hand or carry its endpoints' visitors to members
        that still take them."""
        for endpoint in list(session.endpoints.values()):
            self.report(endpoint.key)

    def report(self, key: str) -> None:
        """Tell the supervisor everything this worker holds of ``key`` now (workers only):
        sent after every change, so its table follows the workers whatever crossed. A
        node of a cluster tells the others what it holds (relay/edge/cluster.py)."""
        if self.cluster is not None:
            self.cluster.changed()
        if self.worker is None:
            return
        endpoint = self.by_key.get(key)
        if endpoint is None:
            self.worker.report(key, "", [], False)
        else:
            host = endpoint if isinstance(endpoint, HostEndpoint) else None
            rewrite = host.host_rewrite if host is not None else None
            self.worker.report(
                key,
                endpoint.holder.token_id,
                endpoint.members,
                is_live(endpoint),
                takes_visitors(endpoint),
                rewrite.decode("latin-1") if rewrite is not None else None,
                host.kind if host is not None else None,
            )

    def endpoint_bound(self, endpoint: TcpEndpoint | HostEndpoint) -> None:
        """The agent has its Bound reply (a new endpoint, or one taken back): an https
        endpoint's certificate is made sure of now, and the agent hears how it stands."""
        if self.cluster is not None:
            self.cluster.changed()
        if isinstance(endpoint, HostEndpoint) and endpoint.kind == "https":
            self.web.certificate_wanted(endpoint)

    async def _check_reserved(self, kind: str, name: str | int, account_id: str) -> bool:
        """Reserved names and ports belong to one account (relay/control/reserved.py): a
        bind of one by another account is refused, and a name outside the base domain, or
        any wildcard, is bound only by the account that reserved it; the base domain's
        other names are first come, first served. A reservation pinned to a region is
        bound only on edges of that region (RegionPinned), so its traffic is never served
        anywhere else (a live endpoint is held to the same rule when a reservation changes:
        relay/edge/live_reservations.py). True when the binding account holds the
        reservation: its ACL's catch-alls then cover the name (the ACL only narrows)."""
        assert self.control is not None
        owner = await self.control.reservation_owner(kind, name)
        refused = reservation_refusal(kind, name, owner, account_id, self.config.region)
        if refused is not None:
            raise refused
        if owner is not None:
            return True
        shown = f"tcp port {name}" if kind == "tcp" else str(name)
        if isinstance(name, str) and not _first_come(name, self.config.base_domain):
            raise NameReserved(
                f"{shown} is not reserved for this token's account: names outside "
                f"{self.config.base_domain} and wildcards are bound only by the account that "
                f"reserved them (relay domains reserve {name})"
            )
        return False

    async def _pins_under(self, hostname: str) -> dict[str, str | None]:
        """For a wildcard: the names under it reserved with a pin to another region than
        this edge's (one question to the control plane, per bind of the wildcard). Its
        endpoint refuses them (421 RLY_631, a TLS alert), as a name held in another
        region is refused: served here by the wildcard whenever its own agent is away
        (or with no cluster to say where it is), a pinned name's traffic would leave its
        region. A reservation under it made or released later replaces the map at once
        (relay/edge/live_reservations.py)."""
        if not hostname.startswith("*."):
            return {}
        assert self.control is not None
        return await self.control.pins_under(hostname, self.config.region)

    def _check_name_owner(self, hostname: str, other_family: str, token_id: str) -> None:
        """A name belongs to one owner across http, https and tls: while token 1 serves
        https://s.<base>, token 2 must not take its plain-HTTP visitors (who would be
        redirected to token 1) by binding http://s.<base>."""
        other = self.registry.holder(f"{other_family}:{hostname}")
        if other is not None and other.token_id != token_id:
            raise EndpointAlreadyBound(f"{hostname} is bound by another token")

    def _hostname_for(self, request: Bind) -> str:
        base = self.config.base_domain
        if request.domain and request.subdomain:
            raise BindError("give either a domain or a subdomain, not both")
        if request.domain:
            name = request.domain.strip().lower().rstrip(".")
        else:
            label = request.subdomain.strip().lower()
            if request.subdomain and not label:  # blanks are no label, not "any name"
                raise BindError(f"subdomain {_quoted(request.subdomain)} is not a DNS label")
            label = label or secrets.token_hex(4)
            if not _valid_label(label):
                raise BindError(f"subdomain {_quoted(label)} is not a DNS label")
            name = f"{label}.{base}"
        bare = name[2:] if name.startswith("*.") else name
        labels_ok = all(_valid_label(p) for p in bare.split("."))
        if not bare or len(name) > MAX_HOSTNAME or not labels_ok:
            raise BindError(f"{_quoted(name)} is not a valid hostname")
        return name

    def _take_over(
        self,
        endpoint: TcpEndpoint | HostEndpoint,
        holder: Holder,
        session: AgentSession,
        rewrite: bytes | None = None,
        kind: str | None = None,
    ) -> TcpEndpoint | HostEndpoint:
        """A link of the same agent, or a pool member, joins; the same link reconnected
        (or any agent of the token, once no member is live) takes its place. ``rewrite``:
        the Host a host endpoint's newcomer rewrites to (``--host-header``); ``kind``:
        what it binds the name as (https or tls on the TLS port)."""
        try:
            replaced = members.admit(endpoint, holder)  # raises if not ours to share or take
            if replaced is None:
                # Every edge, not only one of workers: a report of the key must fit one
                # message there, and visitor routing walks the members.
                members.check_room(endpoint)
            if isinstance(endpoint, HostEndpoint):
                _check_kind(endpoint, replaced, kind)
                _check_rewrite(endpoint, replaced, rewrite)
        except BindError:
            self.report(endpoint.key)  # a claim granted for it must not outlive the refusal
            raise
        if replaced is not None and replaced.session not in (None, session):
            replaced.session.endpoints.pop(endpoint.endpoint_id, None)
        if endpoint.orphan_timer is not None:
            endpoint.orphan_timer.cancel()
            endpoint.orphan_timer = None
        members.add(endpoint, holder, replaced)
        if isinstance(endpoint, HostEndpoint):
            # Equal unless no other member is live: then the newcomer's own rewrite holds,
            # and so does its kind.
            endpoint.host_rewrite = rewrite
            if kind is not None and kind != endpoint.kind:
                was = endpoint.kind
                endpoint.kind = kind
                endpoint.url = self._host_url(kind, endpoint.hostname)
                endpoint.metric_slot = self.endpoint_series.slot_for(endpoint.url, kind)
                if was == "https" and self.web is not None:
                    self.web.certificate_released(endpoint.hostname)  # a tls one needs none
        self.registry.promote(endpoint.key, endpoint.holder)
        session.endpoints[endpoint.endpoint_id] = endpoint
        self.report(endpoint.key)
        joined = "joined" if replaced is None else "took back"
        log.info("session %s %s %s", session.session_id, joined, endpoint.url)
        return endpoint

    def unbind(self, session: AgentSession, endpoint_id: str) -> None:
        endpoint = session.endpoints.pop(endpoint_id, None)
        if endpoint is None:
            return
        if members.leave(endpoint, session):  # other members go on serving it
            self.registry.promote(endpoint.key, endpoint.holder)
            self.report(endpoint.key)
            return
        self._remove(endpoint)

    def end_endpoint(self, endpoint: TcpEndpoint | HostEndpoint) -> None:
        """``endpoint`` is no longer served here, whichever sessions serve it (a
        reservation made since its bind refuses it): its sessions let go of it and it is
        removed, as the last member's unbind removes it."""
        for member in endpoint.members:
            if member.session is not None:
                member.session.endpoints.pop(endpoint.endpoint_id, None)
        self._remove(endpoint)

    def _remove(self, endpoint: TcpEndpoint | HostEndpoint) -> None:
        endpoint.close()
        self.endpoints.pop(endpoint.endpoint_id, None)
        self.account_limits.released(endpoint.endpoint_id)
        if self.by_key.get(endpoint.key) is not endpoint:
            return  # another endpoint has its key now: what is the key's is not this one's
        self.registry.release(endpoint.key, endpoint.holder)
        if isinstance(endpoint, HostEndpoint):
            (self.http_routes if endpoint.family == "http" else self.sni_routes).remove(endpoint)
        else:
            self.ports.release(endpoint.port)
        del self.by_key[endpoint.key]
        if isinstance(endpoint, HostEndpoint) and endpoint.kind == "https" and self.web:
            self.web.certificate_released(endpoint.hostname)
        self.report(endpoint.key)

    def session_ended(self, session: AgentSession) -> None:
        self.sessions.discard(session)
        if session.counted and session.account_id is not None:
            session.counted = False  # counted out once, however often this is called
            self.account_limits.session_ends(session.account_id)
        if session.authenticated:
            reason = session.end_reason or ("drained" if self._stopping else "closed")
            self.metrics.sessions_closed.labels(reason).inc()
        if session.link is not None:
            self.metrics.mux.retire(session.link.session.stats())
        loop = asyncio.get_running_loop()
        for endpoint in list(session.endpoints.values()):
            if all(m.session is not session for m in endpoint.members):
                continue
            if members.leave(endpoint, session):  # other links or pool members serve it
                self.registry.promote(endpoint.key, endpoint.holder)
                self.report(endpoint.key)
                continue
            # Orphaned: visitors are refused meanwhile.
            self.report(endpoint.key)
            if self._stopping:
                continue
            endpoint.orphan_timer = loop.call_later(
                self.config.reclaim_grace, self._orphan_expired, endpoint
            )
        session.endpoints.clear()

    def _orphan_expired(self, endpoint: TcpEndpoint | HostEndpoint) -> None:
        endpoint.orphan_timer = None
        if not is_live(endpoint):
            log.info("releasing %s: its agent did not come back", endpoint.url)
            self._remove(endpoint)


def _account_limits(config: EdgeConfig) -> tuple[int, int, int]:
    return (
        config.max_sessions_per_account,
        config.max_endpoints_per_account,
        config.max_tcp_ports_per_account,
    )


def _log_check_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("checking live sessions' credentials failed: %s", task.exception())


def _quoted(text: str, limit: int = MAX_HOSTNAME) -> str:
    """``text`` as a Python literal for an error message, cut as :func:`cut` cuts: what
    an agent sent may be a control message long (64 KiB), its answer must fit one."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def _check_kind(endpoint: HostEndpoint, replaced: Holder | None, kind: str | None) -> None:
    """One kind per TLS-port name, https (terminated) or tls (passed through): a member
    joining live members as the other kind is refused (RLY_204). Once no other member is
    live, the newcomer's kind replaces the endpoint's (its agent changed what it serves)."""
    if kind is None or kind == endpoint.kind:
        return
    if any(m.session is not None and m is not replaced for m in endpoint.members):
        raise EndpointAlreadyBound(kind_refused(endpoint.hostname, endpoint.kind))


def _check_rewrite(endpoint: HostEndpoint, replaced: Holder | None, rewrite: bytes | None) -> None:
    """One Host rewrite per endpoint: it is the endpoint's, applied to every visitor
    whichever member serves it, so a member joining live members with another
    ``--host-header`` (or none where they have one) is refused (RLY_204) rather than have
    its visitors reach its upstream with their Host. Once no other member is live, the
    newcomer's rewrite replaces the endpoint's."""
    if rewrite == endpoint.host_rewrite:
        return
    if not any(m.session is not None and m is not replaced for m in endpoint.members):
        return
    theirs = endpoint.host_rewrite.decode("latin-1") if endpoint.host_rewrite else None
    raise EndpointAlreadyBound(rewrite_refused(endpoint.hostname, theirs))


def _acl_hint(hostname: str, base_domain: str) -> str:
    if not _first_come(hostname, base_domain):
        return f" (its bind ACL does not name it: e.g. relay token create --allow {hostname})"
    return ""


def _first_come(hostname: str, base_domain: str) -> bool:
    """Whether an unreserved name goes to whoever binds it first: an exact name under the
    edge's base domain. Not a wildcard, even there: it would catch every other name."""
    base = base_domain.lower().rstrip(".")
    return bool(base) and not hostname.startswith("*.") and hostname.endswith("." + base)


def _check_host_header(request: Bind) -> None:
    """BindError unless the bind's Host rewrite is a Host header's value: a host[:port]
    of visible ASCII. Every visitor's head gets it (a CR or LF would split the head), and
    a worker's report of the endpoint and the cluster's row of the name carry it, both
    bounded."""
    value = request.host_header
    if not value:
        return
    if request.kind not in ("http", "https"):
        raise BindError(
            f"host_header applies to http and https endpoints, not {cut(request.kind, 5)}"
        )
    if not is_host_header_value(value):
        raise BindError(
            f"host_header must be a host[:port] of 1 to {MAX_HOST_HEADER} visible ASCII "
            "characters, without spaces"
        )


def _valid_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    )


def _host_of(peer: str) -> str:
    """The host of a session's ``host:port`` peer string (IPv6 too: ``::1:4711`` → ``::1``),
    as the store records where a credential was last used."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


def _open_access_log(destination: str) -> Output:
    try:
        return open_output(destination)
    except OSError as exc:
        raise ConfigError(f"access_log: cannot open {destination}: {exc}") from None


def _shown(value: Any) -> str:
    """A setting's value in a log line: empty ones say so, and a URL's password is not
    written (the store's URL may carry one)."""
    text = str(value)
    if "://" in text and "@" in text:
        text = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", text)
    return text if text else '""'


def _leaf_pem(chain_pem: bytes) -> bytes:
    end = b"-----END CERTIFICATE-----"
    return chain_pem[: chain_pem.index(end) + len(end)] + b"\n"


def _certificate_names(listen_host: str, config: EdgeConfig) -> tuple[list[str], list[str]]:
    names = ["localhost"]
    ips = ["127.0.0.1", "::1"]
    for name in (listen_host, config.public_host, *config.cert_names):
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if name and name not in names:
                names.append(name)
        else:
            if not ip.is_unspecified and str(ip) not in ips:
                ips.append(str(ip))
    return names, ips
