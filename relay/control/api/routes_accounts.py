"""/accounts: operators create, list, suspend and resume them; a member sees its own."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from relay.control.api.auth import Principal, plane_of, requires
from relay.control.api.errors import ErrorBody
from relay.control.api.models import Account, AccountCreate, Page
from relay.control.api.paging import Cursor, Limit, after, cut
from relay.errors import Conflict, NotFound

router = APIRouter(
    prefix="/accounts",
    tags=["accounts"],
    responses={
        409: {
            "model": ErrorBody,
            "description": "the name is taken, or a key would suspend its own account (RLY_602)",
        }
    },
)


@router.get("", summary="List accounts (a member's key: its own)", response_model=Page[Account])
async def list_accounts(
    request: Request,
    limit: Limit = 100,
    cursor: Cursor = None,
    principal: Principal = Depends(requires("accounts:read")),  # noqa: B008
) -> Page[Account]:
    plane = plane_of(request)
    if principal.operator:
        fetched = await plane.ask(lambda: plane.store.list_accounts(after=cursor, limit=limit + 1))
    else:
        fetched = after([principal.account], cursor, lambda a: a.id)
    items, next_cursor = cut(fetched, limit, lambda a: a.id)
    return Page[Account](items=[Account.of(a) for a in items], next_cursor=next_cursor)


@router.post("", status_code=201, summary="Create an account (operators)", response_model=Account)
async def create_account(
    request: Request,
    body: AccountCreate,
    principal: Principal = Depends(requires("accounts:write")),  # noqa: B008
) -> Account:
    principal.must_be_operator("create accounts")
    plane = plane_of(request)
    return Account.of(
        await plane.ask(
            lambda: plane.store.create_account(body.name, role=body.role, actor=principal.actor)
        )
    )


async def _reachable(request: Request, principal: Principal, account_id: str) -> Account:
    if not principal.reaches(account_id):
        raise NotFound(f"no account with id {account_id!r}")
    plane = plane_of(request)
    return Account.of(await plane.ask(lambda: plane.store.get_account(account_id)))


@router.get("/{account_id}", summary="One account", response_model=Account)
async def get_account(
    request: Request,
    account_id: str,
    principal: Principal = Depends(requires("accounts:read")),  # noqa: B008
) -> Account:
    return await _reachable(request, principal, account_id)


@router.post(
    "/{account_id}/suspend",
    summary="Suspend an account: its agents' sessions end within 2 s, new ones are refused",
    response_model=Account,
)
async def suspend_account(
    request: Request,
    account_id: str,
    principal: Principal = Depends(requires("accounts:write")),  # noqa: B008
) -> Account:
    principal.must_be_operator("suspend accounts")
    if account_id == principal.account.id:
        # The caller would lock itself out, and maybe the last operator with it.
        raise Conflict("a key cannot suspend its own account")
    await _reachable(request, principal, account_id)
    plane = plane_of(request)
    account = Account.of(
        await plane.ask(
            lambda: plane.store.set_account_status(account_id, "suspended", actor=principal.actor)
        )
    )
    plane.announce_credentials_ended()
    return account


@router.post("/{account_id}/resume", summary="Resume a suspended account", response_model=Account)
async def resume_account(
    request: Request,
    account_id: str,
    principal: Principal = Depends(requires("accounts:write")),  # noqa: B008
) -> Account:
    principal.must_be_operator("resume accounts")
    await _reachable(request, principal, account_id)
    plane = plane_of(request)
    return Account.of(
        await plane.ask(
            lambda: plane.store.set_account_status(account_id, "active", actor=principal.actor)
        )
    )
