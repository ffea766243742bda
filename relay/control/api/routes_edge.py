"""/edge/…: what an edge running apart from its control plane asks of it (relay/control/
for_edge.py RemoteControl), with an operator's API key that has the ``edge`` scope:
verify an agent's token, say which live sessions' tokens ended, who holds a reserved
name or port, which reservations changed since the edge last asked, and take the edge's
audit events."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from relay.control.api.auth import Principal, plane_of, requires
from relay.control.api.models import Strict, VerifiedCredential
from relay.control.reserved import MAX_ASKED, MAX_CHANGES
from relay.errors import ConfigError

router = APIRouter(prefix="/edge", tags=["edge"])

#: Events one request may carry (the edge sends at most 500 at a time).
MAX_EVENTS = 1000


class TokenCheck(Strict):
    token: str = Field(max_length=200)
    peer: str = Field(max_length=300, description="The agent's address, for the audit log.")
    address: str | None = Field(None, max_length=300)


class TokenIds(Strict):
    ids: list[str] = Field(max_length=10_000)


class Inactive(Strict):
    inactive: dict[str, str]


class EdgeEvent(Strict):
    actor: str = Field(max_length=300)
    action: str = Field(max_length=64)
    target: str = Field(max_length=300)
    detail: dict[str, Any] = Field(default_factory=dict)


class EdgeEvents(Strict):
    events: list[EdgeEvent] = Field(max_length=MAX_EVENTS)


class Recorded(Strict):
    recorded: int


class NameQuery(Strict):
    kind: Literal["http", "https", "tls", "tcp"]
    name: str = Field(max_length=300, description="A hostname, or a TCP port's number.")


class Owner(Strict):
    account_id: str | None
    #: The region the reservation pins its traffic to (None: any region).
    region: str | None = None


class WildcardQuery(Strict):
    wildcard: str = Field(max_length=300, description="A bound wildcard, e.g. *.example.com.")
    region: str = Field(max_length=64, description="The binding edge's region.")


class Pins(Strict):
    #: Name (or narrower wildcard) → the other region it is pinned to; None: a name under
    #: such a pin that is servable in the asking edge's region again.
    pins: dict[str, str | None]


class NoArguments(Strict):
    pass


class Ports(Strict):
    ports: list[int]


class ChangesQuery(Strict):
    after: int | None = Field(
        None, ge=0, description="The mark of the last answer; null: the edge knows none yet."
    )
    limit: int = Field(500, ge=1, le=MAX_CHANGES, description="Reservation events at most.")


class Changes(Strict):
    #: The mark to ask from next time.
    mark: int
    #: The domains (exact or wildcard) and ports reserved or released since ``after``.
    domains: list[str]
    ports: list[int]
    #: The edge cannot know what changed (no mark, or a mark from another database):
    #: every live name is to be checked again.
    everything: bool
    #: Cut at ``limit``: ask again from ``mark``.
    more: bool
    #: Of ``domains`` and ``ports``, those an operator changed: only these end another
    #: account's live endpoint at once (a member's reservation acts on its next bind).
    operator_domains: list[str] = Field(default_factory=list)
    operator_ports: list[int] = Field(default_factory=list)


class OwnersQuery(Strict):
    names: list[Annotated[str, Field(max_length=300)]] = Field(
        default_factory=list, max_length=MAX_ASKED
    )
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list, max_length=MAX_ASKED
    )


class Owners(Strict):
    #: Of the names and ports asked about, the reserved ones (ports as strings: JSON keys).
    names: dict[str, Owner]
    ports: dict[str, Owner]


@router.post(
    "/verify_token", summary="Verify an agent's authtoken", response_model=VerifiedCredential
)
async def verify_token(
    request: Request,
    body: TokenCheck,
    principal: Principal = Depends(requires("edge")),  # noqa: B008
) -> VerifiedCredential:
    principal.must_be_operator("act as an edge")
    plane = plane_of(request)
    record = await plane.ask(
        lambda: plane.store.verify_token(
            body.token, pepper=plane.pepper, actor=f"agent@{body.peer}", address=body.address
        )
    )
    return VerifiedCredential.verified(record)


@router.post(
    "/inactive_tokens",
    summary="Which of these tokens may no longer be used, and why",
    response_model=Inactive,
)
async def inactive_tokens(
    request: Request,
    body: TokenIds,
    principal: Principal = Depends(requires("edge")),  # noqa: B008
) -> Inactive:
    principal.must_be_operator("act as an edge")
    plane = plane_of(request)
    return Inactive(inactive=dict(await plane.ask(lambda: plane.store.inactive_tokens(body.ids))))


@router.post("/audit_events", summary="Record an edge's audit events", response_model=Recorded)
async def record_events(
    request: Request,
    body: EdgeEvents,
    principal: Principal = Depends(requires("edge")),  # noqa: B008
) -> Recorded:
    principal.must_be_operator("act as an edge")
    plane = plane_of(request)

    def record() -> None:
        for event in body.events:
            # The edge is named beside the actor it reports: an edge key cannot pass its
            # events off as the control plane's own.
            detail = {**event.detail, "edge": principal.actor}
            plane.store.audit.append(event.actor, event.action, event.target, detail)

    await plane.ask(record)
    return Recorded(recorded=len(body.events))


@router.post(
    "/reservation_owner",
    summary="The account whose reservation covers a hostname or a TCP port",
    response_model=Owner,
)
async def reservation_owner(
    request: Request,
    body: NameQuery,
    principal: Principal = Depends(requires("edge")),  # noqa: B008
) -> Owner:
    principal.must_be_operator("act as an edge")
    name: str | int = body.name
    if body.kind == "tcp":
        digits = body.name.isascii() and body.name.isdigit()
        if not digits or not 1 <= int(body.name) <= 65535:
            raise ConfigError(f"a tcp reservation is a port number, not {body.name!r}")
        name = int(body.name)
    plane = plane_of(request)
    owner = await plane.ask(lambda: plane.store.bind_owner(body.kind, name))
    if owner is None:
        return Owner(account_id=None)
    return Owner(account_id=owner.account_id, region=owner.region)


@router.post(
    "/pins_under",
    summary="Reservations under a wildcard pinned to another region than the edge's",
    response_model=Pins,
)
async def pins_under(
    request: Request,
    body: WildcardQuery,
    principal: Principal = Depends(requires("edge")),  # noqa: B008
) -> Pins:
    principal.must_be_operator("act as an edge")
    plane = plane_of(request)
    return Pins(pins=await plane.ask(lambda: plane.store.pins_under(body.wildcard, body.region)))


@router.post("/reserved_ports", summary="Every reserved TCP port", response_model=Ports)
async def reserved_ports(
    request: Request,
    body: NoArguments,
    principal: Principal = Depends(requires("edge")),  # noqa: B008
) -> Ports:
    principal.must_be_operator("act as an edge")
    plane = plane_of(request)
    return Ports(ports=sorted(await plane.ask(plane.store.reserved_ports)))


@router.post(
    "/reservation_changes",
    summary="The domains and ports reserved or released since the edge last asked",
    response_model=Changes,
)
async def reservation_changes(
    request: Request,
    body: ChangesQuery,
    principal: Principal = Depends(requires("edge")),  # noqa: B008
) -> Changes:
    principal.must_be_operator("act as an edge")
    plane = plane_of(request)
    changes = await plane.ask(lambda: plane.store.reservation_changes(body.after, body.limit))
    return Changes(
        mark=changes.mark,
        domains=list(changes.domains),
        ports=list(changes.ports),
        everything=changes.everything,
        more=changes.more,
        operator_domains=list(changes.operator_domains),
        operator_ports=list(changes.operator_ports),
    )


@router.post(
    "/reservation_owners",
    summary="The reservations covering many hostnames and TCP ports (the reserved ones)",
    response_model=Owners,
)
async def reservation_owners(
    request: Request,
    body: OwnersQuery,
    principal: Principal = Depends(requires("edge")),  # noqa: B008
) -> Owners:
    principal.must_be_operator("act as an edge")
    plane = plane_of(request)
    names, held = await plane.ask(lambda: plane.store.reservation_owners(body.names, body.ports))
    return Owners(
        names={n: Owner(account_id=r.account_id, region=r.region) for n, r in names.items()},
        ports={str(p): Owner(account_id=r.account_id, region=r.region) for p, r in held.items()},
    )
