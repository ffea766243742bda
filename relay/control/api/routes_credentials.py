"""/credentials (authtokens for agents) and /api_keys (for this API): create (the secret
is in the answer, once), list, get, revoke. A key may only grant what it holds: a new API
key's scopes must each be granted by the caller's own."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from relay.control.api.auth import Principal, plane_of, requires
from relay.control.api.models import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    Credential,
    CredentialCreate,
    CredentialCreated,
    Page,
)
from relay.control.api.paging import Cursor, Limit, cut
from relay.control.scopes import validate_scopes
from relay.errors import Forbidden, NotFound

credentials = APIRouter(prefix="/credentials", tags=["credentials"])
api_keys = APIRouter(prefix="/api_keys", tags=["api_keys"])


def _owner(principal: Principal, account_id: str | None) -> str:
    """The account a new credential is for: the caller's own unless it names one it reaches."""
    if account_id is None:
        return principal.account.id
    if not principal.reaches(account_id):
        raise NotFound(f"no account with id {account_id!r}")
    return account_id


def _listed_account(principal: Principal, account_id: str | None) -> str | None:
    """Whose objects a list shows: a member's key sees its own account's only."""
    if principal.operator:
        return account_id
    if account_id is not None and account_id != principal.account.id:
        raise NotFound(f"no account with id {account_id!r}")
    return principal.account.id


# -- authtokens ----------------------------------------------------------------------------


@credentials.get("", summary="List authtokens", response_model=Page[Credential])
async def list_credentials(
    request: Request,
    account_id: str | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    principal: Principal = Depends(requires("credentials:read")),  # noqa: B008
) -> Page[Credential]:
    plane = plane_of(request)
    owner = _listed_account(principal, account_id)
    fetched = await plane.ask(
        lambda: plane.store.list_tokens(account_id=owner, after=cursor, limit=limit + 1)
    )
    items, next_cursor = cut(fetched, limit, lambda t: t.id)
    return Page[Credential](items=[Credential.of(t) for t in items], next_cursor=next_cursor)


@credentials.post(
    "", status_code=201, summary="Create an authtoken", response_model=CredentialCreated
)
async def create_credential(
    request: Request,
    body: CredentialCreate,
    principal: Principal = Depends(requires("credentials:write")),  # noqa: B008
) -> CredentialCreated:
    plane = plane_of(request)
    owner = _owner(principal, body.account_id)
    record, token = await plane.ask(
        lambda: plane.store.create_token(
            account_id=owner,
            description=body.description,
            expires_at=body.expires_at,
            bind_acl=body.bind_acl,
            pepper=plane.pepper,
            actor=principal.actor,
        )
    )
    return CredentialCreated(**Credential.of(record).model_dump(), token=token)


async def _credential(request: Request, principal: Principal, token_id: str) -> Credential:
    plane = plane_of(request)
    record = await plane.ask(lambda: plane.store.get_token(token_id))
    if not principal.reaches(record.account_id):
        raise NotFound(f"no token with id {token_id!r}")
    return Credential.of(record)


@credentials.get("/{credential_id}", summary="One authtoken", response_model=Credential)
async def get_credential(
    request: Request,
    credential_id: str,
    principal: Principal = Depends(requires("credentials:read")),  # noqa: B008
) -> Credential:
    return await _credential(request, principal, credential_id)


@credentials.delete(
    "/{credential_id}",
    summary="Revoke an authtoken: its agents' sessions end within 2 s",
    response_model=Credential,
)
async def revoke_credential(
    request: Request,
    credential_id: str,
    principal: Principal = Depends(requires("credentials:write")),  # noqa: B008
) -> Credential:
    await _credential(request, principal, credential_id)
    plane = plane_of(request)
    revoked = Credential.of(
        await plane.ask(lambda: plane.store.revoke_token(credential_id, actor=principal.actor))
    )
    plane.announce_credentials_ended()
    return revoked


# -- API keys ------------------------------------------------------------------------------


@api_keys.get("", summary="List API keys", response_model=Page[ApiKey])
async def list_api_keys(
    request: Request,
    account_id: str | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    principal: Principal = Depends(requires("credentials:read")),  # noqa: B008
) -> Page[ApiKey]:
    plane = plane_of(request)
    owner = _listed_account(principal, account_id)
    fetched = await plane.ask(
        lambda: plane.store.list_api_keys(account_id=owner, after=cursor, limit=limit + 1)
    )
    items, next_cursor = cut(fetched, limit, lambda k: k.id)
    return Page[ApiKey](items=[ApiKey.of(k) for k in items], next_cursor=next_cursor)


@api_keys.post("", status_code=201, summary="Create an API key", response_model=ApiKeyCreated)
async def create_api_key(
    request: Request,
    body: ApiKeyCreate,
    principal: Principal = Depends(requires("credentials:write")),  # noqa: B008
) -> ApiKeyCreated:
    scopes = validate_scopes(body.scopes)
    beyond = [s for s in scopes if not principal.may(s)]
    if beyond:
        raise Forbidden(f"a key cannot grant scopes it lacks: {', '.join(beyond)}")
    plane = plane_of(request)
    owner = _owner(principal, body.account_id)
    record, key = await plane.ask(
        lambda: plane.store.create_api_key(
            owner,
            scopes=scopes,
            description=body.description,
            expires_at=body.expires_at,
            pepper=plane.pepper,
            actor=principal.actor,
        )
    )
    return ApiKeyCreated(**ApiKey.of(record).model_dump(), key=key)


async def _api_key(request: Request, principal: Principal, key_id: str) -> ApiKey:
    plane = plane_of(request)
    record = await plane.ask(lambda: plane.store.get_api_key(key_id))
    if not principal.reaches(record.account_id):
        raise NotFound(f"no API key with id {key_id!r}")
    return ApiKey.of(record)


@api_keys.get("/{key_id}", summary="One API key", response_model=ApiKey)
async def get_api_key(
    request: Request,
    key_id: str,
    principal: Principal = Depends(requires("credentials:read")),  # noqa: B008
) -> ApiKey:
    return await _api_key(request, principal, key_id)


@api_keys.delete("/{key_id}", summary="Revoke an API key", response_model=ApiKey)
async def revoke_api_key(
    request: Request,
    key_id: str,
    principal: Principal = Depends(requires("credentials:write")),  # noqa: B008
) -> ApiKey:
    await _api_key(request, principal, key_id)
    plane = plane_of(request)
    return ApiKey.of(
        await plane.ask(lambda: plane.store.revoke_api_key(key_id, actor=principal.actor))
    )
