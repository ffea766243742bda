"""/reserved_domains and /reserved_addrs: names and TCP ports that belong to one account.
An edge refuses a bind of a reserved name or port by any other account (RLY_207), and
binds a name outside its base domain only for the account that reserved it. A member's
key reaches its own account's reservations; an operator's every account's, and only an
operator's reserves a wildcard over an edge's whole base domain (its names are every
account's, first come). A reservation made or released acts on live endpoints at once:
the edge serving the API is told, and tells the others
(ControlPlane.announce_reservations_changed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from relay.control.api.auth import Principal, plane_of, requires
from relay.control.api.errors import ErrorBody
from relay.control.api.models import (
    Page,
    ReservedAddr,
    ReservedAddrCreate,
    ReservedDomain,
    ReservedDomainCreate,
)
from relay.control.api.paging import Cursor, Limit, cut

# Whose objects a caller reaches is decided as for credentials: one rule, one place.
from relay.control.api.routes_credentials import _listed_account, _owner
from relay.control.reserved import shared_domain_covered, validate_domain
from relay.errors import Forbidden, NotFound

_TAKEN: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorBody,
        "description": "reserved already, or overlapping another account's reservation (RLY_602)",
    }
}

domains = APIRouter(prefix="/reserved_domains", tags=["reserved_domains"], responses=_TAKEN)
addrs = APIRouter(prefix="/reserved_addrs", tags=["reserved_addrs"], responses=_TAKEN)


# -- domains -------------------------------------------------------------------------------


@domains.get("", summary="List reserved domains", response_model=Page[ReservedDomain])
async def list_reserved_domains(
    request: Request,
    account_id: str | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    principal: Principal = Depends(requires("reserved:read")),  # noqa: B008
) -> Page[ReservedDomain]:
    plane = plane_of(request)
    owner = _listed_account(principal, account_id)
    fetched = await plane.ask(
        lambda: plane.store.list_reserved_domains(account_id=owner, after=cursor, limit=limit + 1)
    )
    items, next_cursor = cut(fetched, limit, lambda r: r.id)
    return Page[ReservedDomain](
        items=[ReservedDomain.of(r) for r in items], next_cursor=next_cursor
    )


@domains.post(
    "",
    status_code=201,
    summary="Reserve a domain (exact or wildcard) for an account",
    response_model=ReservedDomain,
)
async def reserve_domain(
    request: Request,
    body: ReservedDomainCreate,
    principal: Principal = Depends(requires("reserved:write")),  # noqa: B008
) -> ReservedDomain:
    plane = plane_of(request)
    owner = _owner(principal, body.account_id)
    if not principal.operator:
        domain = validate_domain(body.domain)
        shared = shared_domain_covered(domain, plane.shared_domains)
        if shared is not None:
            raise Forbidden(
                f"only an operator account's key may reserve {domain}: it covers every "
                f"name under {shared}, which accounts bind first come"
            )
    record = await plane.ask(
        lambda: plane.store.reserve_domain(
            owner,
            body.domain,
            certificate_mode=body.certificate_mode,
            region=body.region,
            actor=principal.actor,
        )
    )
    plane.announce_reservations_changed()
    return ReservedDomain.of(record)


async def _domain(request: Request, principal: Principal, reservation_id: str) -> ReservedDomain:
    plane = plane_of(request)
    record = await plane.ask(lambda: plane.store.get_reserved_domain(reservation_id))
    if not principal.reaches(record.account_id):
        raise NotFound(f"no reserved domain with id {reservation_id!r}")
    return ReservedDomain.of(record)


@domains.get("/{reservation_id}", summary="One reserved domain", response_model=ReservedDomain)
async def get_reserved_domain(
    request: Request,
    reservation_id: str,
    principal: Principal = Depends(requires("reserved:read")),  # noqa: B008
) -> ReservedDomain:
    return await _domain(request, principal, reservation_id)


@domains.delete(
    "/{reservation_id}",
    summary="Release a reserved domain; the released reservation is the answer",
    response_model=ReservedDomain,
)
async def release_domain(
    request: Request,
    reservation_id: str,
    principal: Principal = Depends(requires("reserved:write")),  # noqa: B008
) -> ReservedDomain:
    await _domain(request, principal, reservation_id)
    plane = plane_of(request)
    released = await plane.ask(
        lambda: plane.store.release_domain(reservation_id, actor=principal.actor)
    )
    plane.announce_reservations_changed()
    return ReservedDomain.of(released)


# -- TCP addresses -------------------------------------------------------------------------


@addrs.get("", summary="List reserved TCP addresses", response_model=Page[ReservedAddr])
async def list_reserved_addrs(
    request: Request,
    account_id: str | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    principal: Principal = Depends(requires("reserved:read")),  # noqa: B008
) -> Page[ReservedAddr]:
    plane = plane_of(request)
    owner = _listed_account(principal, account_id)
    fetched = await plane.ask(
        lambda: plane.store.list_reserved_addrs(account_id=owner, after=cursor, limit=limit + 1)
    )
    items, next_cursor = cut(fetched, limit, lambda r: r.id)
    return Page[ReservedAddr](items=[ReservedAddr.of(r) for r in items], next_cursor=next_cursor)


@addrs.post(
    "",
    status_code=201,
    summary="Reserve a TCP port for an account",
    response_model=ReservedAddr,
)
async def reserve_addr(
    request: Request,
    body: ReservedAddrCreate,
    principal: Principal = Depends(requires("reserved:write")),  # noqa: B008
) -> ReservedAddr:
    plane = plane_of(request)
    owner = _owner(principal, body.account_id)
    record = await plane.ask(
        lambda: plane.store.reserve_addr(
            owner, body.port, region=body.region, actor=principal.actor
        )
    )
    plane.announce_reservations_changed()
    return ReservedAddr.of(record)


async def _addr(request: Request, principal: Principal, reservation_id: str) -> ReservedAddr:
    plane = plane_of(request)
    record = await plane.ask(lambda: plane.store.get_reserved_addr(reservation_id))
    if not principal.reaches(record.account_id):
        raise NotFound(f"no reserved address with id {reservation_id!r}")
    return ReservedAddr.of(record)


@addrs.get("/{reservation_id}", summary="One reserved TCP address", response_model=ReservedAddr)
async def get_reserved_addr(
    request: Request,
    reservation_id: str,
    principal: Principal = Depends(requires("reserved:read")),  # noqa: B008
) -> ReservedAddr:
    return await _addr(request, principal, reservation_id)


@addrs.delete(
    "/{reservation_id}",
    summary="Release a reserved TCP address; the released reservation is the answer",
    response_model=ReservedAddr,
)
async def release_addr(
    request: Request,
    reservation_id: str,
    principal: Principal = Depends(requires("reserved:write")),  # noqa: B008
) -> ReservedAddr:
    await _addr(request, principal, reservation_id)
    plane = plane_of(request)
    released = await plane.ask(
        lambda: plane.store.release_addr(reservation_id, actor=principal.actor)
    )
    plane.announce_reservations_changed()
    return ReservedAddr.of(released)
