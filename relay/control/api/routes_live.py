"""The serving edge's live state: /tunnel_sessions (list, get, stop, restart),
/endpoints and /certificates, and /reload (every node reads its configuration file
again). Served only where an edge is attached; elsewhere these answer 404 with RLY_601
saying so."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from relay.control.api.auth import Principal, plane_of, requires
from relay.control.api.models import (
    Certificate,
    Endpoint,
    NodeReload,
    Page,
    Reloaded,
    TunnelSession,
)
from relay.control.api.paging import Cursor, Limit, after, cut
from relay.control.api.plane import LiveView, SessionView
from relay.control.scopes import ADMIN
from relay.errors import NotFound

sessions = APIRouter(prefix="/tunnel_sessions", tags=["tunnel_sessions"])
endpoints = APIRouter(prefix="/endpoints", tags=["endpoints"])
certificates = APIRouter(prefix="/certificates", tags=["certificates"])
reload = APIRouter(prefix="/reload", tags=["reload"])


def _live(request: Request) -> LiveView:
    live = plane_of(request).live
    if live is None:
        raise NotFound("no edge is attached to this control plane: live state is on the edges")
    return live


def _session(s: SessionView) -> TunnelSession:
    return TunnelSession(
        id=s.id,
        account_id=s.account_id,
        credential_id=s.token_id,
        peer=s.peer,
        region=s.region,
        endpoints=list(s.endpoints),
    )


@sessions.get("", summary="List live agent sessions", response_model=Page[TunnelSession])
async def list_sessions(
    request: Request,
    limit: Limit = 100,
    cursor: Cursor = None,
    principal: Principal = Depends(requires("sessions:read")),  # noqa: B008
) -> Page[TunnelSession]:
    listed = await _live(request).sessions()
    reached = (s for s in listed.items if principal.reaches(s.account_id))
    items, next_cursor = cut(after(reached, cursor, lambda s: s.id), limit, lambda s: s.id)
    return Page[TunnelSession](items=[_session(s) for s in items], next_cursor=next_cursor)


async def _find(request: Request, principal: Principal, session_id: str) -> SessionView:
    listed = await _live(request).sessions()
    for s in listed.items:
        if s.id == session_id and principal.reaches(s.account_id):
            return s
    if listed.others_unasked is not None:
        # Not here, and another node may hold it: say why it cannot be known.
        raise NotFound(f"no live session with id {session_id!r} here; {listed.others_unasked}")
    raise NotFound(f"no live session with id {session_id!r}")


@sessions.get("/{session_id}", summary="One live agent session", response_model=TunnelSession)
async def get_session(
    request: Request,
    session_id: str,
    principal: Principal = Depends(requires("sessions:read")),  # noqa: B008
) -> TunnelSession:
    return _session(await _find(request, principal, session_id))


@sessions.post(
    "/{session_id}/stop",
    summary="End the session; the agent is told not to reconnect",
    response_model=TunnelSession,
)
async def stop_session(
    request: Request,
    session_id: str,
    principal: Principal = Depends(requires("sessions:write")),  # noqa: B008
) -> TunnelSession:
    found = await _find(request, principal, session_id)
    if not await _live(request).stop_session(session_id, actor=principal.actor):
        raise NotFound(f"no live session with id {session_id!r}")
    return _session(found)


@sessions.post(
    "/{session_id}/restart",
    summary="Ask the agent to reconnect; it gets its endpoints back",
    response_model=TunnelSession,
)
async def restart_session(
    request: Request,
    session_id: str,
    principal: Principal = Depends(requires("sessions:write")),  # noqa: B008
) -> TunnelSession:
    found = await _find(request, principal, session_id)
    if not await _live(request).restart_session(session_id, actor=principal.actor):
        raise NotFound(f"no live session with id {session_id!r}")
    return _session(found)


@endpoints.get("", summary="List bound endpoints", response_model=Page[Endpoint])
async def list_endpoints(
    request: Request,
    limit: Limit = 100,
    cursor: Cursor = None,
    principal: Principal = Depends(requires("endpoints:read")),  # noqa: B008
) -> Page[Endpoint]:
    listed = await _live(request).endpoints()
    reached = (e for e in listed.items if principal.reaches(e.account_id))
    items, next_cursor = cut(after(reached, cursor, lambda e: e.id), limit, lambda e: e.id)
    return Page[Endpoint](
        items=[
            Endpoint(
                id=e.id,
                url=e.url,
                kind=e.kind,
                tunnel_session_id=e.session_id,
                account_id=e.account_id,
            )
            for e in items
        ],
        next_cursor=next_cursor,
    )


@certificates.get(
    "", summary="Certificates the edge serves (operators)", response_model=list[Certificate]
)
async def list_certificates(
    request: Request,
    principal: Principal = Depends(requires("endpoints:read")),  # noqa: B008
) -> list[Certificate]:
    principal.must_be_operator("list the edge's certificates")
    return [
        Certificate(
            name=c.name,
            not_after=c.not_after,
            status="issued" if c.not_after is not None else "pending",
        )
        for c in sorted(_live(request).certificates(), key=lambda c: c.name)
    ]


@reload.post(
    "",
    summary="Every node (and worker) reads its configuration file again, as on SIGHUP",
    response_model=Reloaded,
)
async def reload_edges(
    request: Request,
    principal: Principal = Depends(requires(ADMIN)),  # noqa: B008
) -> Reloaded:
    principal.must_be_operator("reload the edges")
    views = await _live(request).reload(actor=principal.actor)
    return Reloaded(
        nodes=[
            NodeReload(
                node=v.node,
                answered=v.answered,
                applied=list(v.applied),
                kept=list(v.kept),
                refused=v.refused,
            )
            for v in views
        ]
    )
