"""The edge as the control-plane API sees it: its live sessions, endpoints and
certificates, stopping or restarting a session (relay.control.api.LiveView; on a node of a
cluster, every node's sessions and endpoints: relay/edge/cluster_asks.py; with workers,
every worker's: relay/edge/worker_asks.py), and the
per-source refusal of callers that fail to authenticate (relay.control.api.FailureGuard).

Ownership comes from the token each session authenticated with: the edge keeps the
records it verified (``Edge.tokens``), each naming its account.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from relay.control.api import CertificateView, EndpointView, ReloadView, SessionView
from relay.control.api.plane import Listing
from relay.edge.auth_guard import source_of
from relay.edge.cluster_asks import OthersUnasked
from relay.errors import SessionStopped

if TYPE_CHECKING:
    from relay.edge.cluster_asks import ClusterAsks
    from relay.edge.server import Edge
    from relay.edge.session import AgentSession

V = TypeVar("V")


class EdgeLiveView:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    def _account_of(self, token_id: str | None) -> str | None:
        record = self.edge.tokens.get(token_id or "")
        return record.account_id if record is not None else None

    def _live(self) -> dict[str, AgentSession]:
        return {s.session_id: s for s in self.edge.sessions if s.authenticated}

    # --- the API's LiveView: this node's, and on a node of a cluster every node's -------

    def _others(self) -> ClusterAsks | None:
        """Who to ask for the rest: the other nodes of a cluster (a worker's siblings are
        nodes too), or else the other workers of this edge."""
        if self.edge.cluster is not None:
            return self.edge.cluster.asks
        return self.edge.worker.asks if self.edge.worker is not None else None

    async def sessions(self) -> Listing[SessionView]:
        return await self._with_others(self.local_sessions(), lambda asks: asks.sessions())

    async def endpoints(self) -> Listing[EndpointView]:
        return await self._with_others(self.local_endpoints(), lambda asks: asks.endpoints())

    async def _with_others(
        self, own: list[V], theirs: Callable[[ClusterAsks], Awaitable[list[V]]]
    ) -> Listing[V]:
        others = self._others()
        if others is None:
            return Listing(own)
        try:
            return Listing(own + await theirs(others))
        except OthersUnasked as err:
            # Redis is down: this node's own part is still true, and its sessions must
            # stay listable and stoppable (ClusterAsks logs the outage once).
            return Listing(own, others_unasked=str(err))

    async def stop_session(self, session_id: str, *, actor: str) -> bool:
        if self.local_stop(session_id, actor=actor):
            return True
        others = self._others()
        return others is not None and await others.act("stop", session_id, actor=actor)

    async def restart_session(self, session_id: str, *, actor: str) -> bool:
        if self.local_restart(session_id, actor=actor):
            return True
        others = self._others()
        return others is not None and await others.act("restart", session_id, actor=actor)

    async def reload(self, *, actor: str) -> list[ReloadView]:
        views = [_reload_view(self.node_name(), self.local_reload(actor=actor))]
        others = self._others()
        if others is not None:
            for node, outcome in (await others.reload(actor=actor)).items():
                views.append(_reload_view(node, outcome))
        return views

    # --- this node's own (relay/edge/cluster_asks.py answers the others from these) ----

    def node_name(self) -> str:
        """How a reload names this process: its node id in a cluster (a worker's is
        its own), its worker index on an edge with workers, else ``edge``."""
        if self.edge.cluster is not None:
            return self.edge.cluster.node_id
        if self.edge.worker is not None:
            return str(self.edge.worker.index)
        return "edge"

    def local_reservations_changed(self) -> None:
        """Another worker's API made or released a reservation."""
        self.edge.reservations.changed(announce=False)

    def local_reload(self, *, actor: str) -> dict[str, Any]:
        """Read the configuration file again, as SIGHUP does (``Edge.reloader``)."""
        reloader = self.edge.reloader
        if reloader is None:
            outcome: dict[str, Any] = {"refused": "this edge was not started with a file"}
        else:
            result = reloader()
            outcome = {
                "applied": list(result.applied),
                "kept": list(result.kept),
                "refused": result.refused.one_line() if result.refused is not None else None,
            }
        if self.edge.control is not None:
            self.edge.control.audit(actor, "edge.reload", self.node_name(), outcome)
        return outcome

    def local_sessions(self) -> list[SessionView]:
        views = []
        for s in self._live().values():
            account = self._account_of(s.token_id)
            if account is None or s.token_id is None:
                continue  # authenticated before the store named its account: not listable
            views.append(
                SessionView(
                    id=s.session_id,
                    account_id=account,
                    token_id=s.token_id,
                    peer=s.peer,
                    region=self.edge.config.region,
                    endpoints=tuple(sorted(e.url for e in s.endpoints.values())),
                )
            )
        return views

    def local_endpoints(self) -> list[EndpointView]:
        return [
            EndpointView(
                id=e.endpoint_id,
                url=e.url,
                kind=e.kind,
                session_id=e.holder.session.session_id if e.holder.session else None,
                account_id=self._account_of(e.holder.token_id),
            )
            for e in self.edge.endpoints.values()
        ]

    def certificates(self) -> list[CertificateView]:
        certs = self.edge.web.certs if self.edge.web is not None else None
        if certs is None:
            return []
        return [CertificateView(name, certs.not_after(name)) for name in certs.names()]

    def local_stop(self, session_id: str, *, actor: str) -> bool:
        session = self._live().get(session_id)
        if session is None:
            return False
        self._audit(actor, "session.stop", session, "stopped through the API")
        session.end_reason = "stopped"
        stopped = SessionStopped("an operator stopped this session; do not reconnect")
        session.stop(stopped.code, stopped.message)
        return True

    def local_restart(self, session_id: str, *, actor: str) -> bool:
        session = self._live().get(session_id)
        if session is None or session.control is None:
            return False
        self._audit(actor, "session.restart", session, "restarted through the API")
        session.restart("the session was restarted by an operator; reconnect")
        return True

    def _audit(self, actor: str, action: str, session: AgentSession, reason: str) -> None:
        assert self.edge.control is not None
        self.edge.control.audit(
            actor,
            action,
            session.token_id or "",
            {"session": session.session_id, "peer": session.peer, "reason": reason},
        )


def _reload_view(node: str, outcome: dict[str, Any] | None) -> ReloadView:
    """A node's answer to a reload, as the API shows it; anything malformed is taken as
    no answer (another node's reply comes off the wire)."""
    if not isinstance(outcome, dict):
        return ReloadView(node, answered=False)

    def names(key: str) -> tuple[str, ...]:
        value = outcome.get(key)
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

    refused = outcome.get("refused")
    return ReloadView(
        node,
        answered=True,
        applied=names("applied"),
        kept=names("kept"),
        refused=refused if isinstance(refused, str) else None,
    )


class ApiFailureGuard:
    """The API's failed keys count in the edge's AuthGuard with the agent port's failed
    tokens: one source, one budget."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    def blocked_for(self, host: str) -> float:
        return self.edge.auth_guard.blocked_for(source_of(host))

    def failed(self, host: str) -> None:
        self.edge.count_auth_failure(source_of(host), f"api@{host}", "API requests")
