"""Who is calling: a bearer API key, verified against the store, and what it may do.

A key carries scopes (relay/control/scopes.py) and belongs to an account. Scopes say which
kinds of thing the key may touch; the account's role says whose: an operator's key reaches
every account, a member's only its own. A route declares its scope with
``Depends(requires("..."))``; ownership is checked where the object is known.

A source whose keys keep failing is refused for a while (the edge's AuthGuard, shared with
the agent port), before the store is asked: guessing costs a hash and an audit write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from relay.control.api.plane import ControlPlane
from relay.control.scopes import grants
from relay.control.store import AccountRecord, ApiKeyRecord
from relay.errors import (
    ExpiredApiKey,
    Forbidden,
    InvalidApiKey,
    RateLimited,
    RevokedApiKey,
)

#: Failures that count against the source: a key that does not verify. A suspended
#: account's valid key is not a guess.
_GUESSES = (InvalidApiKey, RevokedApiKey, ExpiredApiKey)

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer rlk_…`")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its key and the key's account."""

    key: ApiKeyRecord
    account: AccountRecord

    @property
    def operator(self) -> bool:
        return self.account.role == "operator"

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"api_key:{self.key.id}"

    def may(self, scope: str) -> bool:
        return grants(self.key.scopes, scope)

    def reaches(self, account_id: str | None) -> bool:
        """Whether objects of ``account_id`` are this caller's to see and change."""
        return self.operator or account_id == self.account.id

    def must_be_operator(self, what: str) -> None:
        if not self.operator:
            raise Forbidden(f"only an operator account's key may {what}")


def plane_of(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


def client_host(request: Request) -> str:
    return request.client.host if request.client is not None else "-"


async def authenticate(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> Principal:
    plane = plane_of(request)
    host = client_host(request)
    if plane.guard is not None and (wait := plane.guard.blocked_for(host)) > 0:
        raise RateLimited(
            f"too many failed authentications from {host}; retry in {wait:.0f} s",
            retry_after=wait,
        )
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise InvalidApiKey("an API key is required: Authorization: Bearer rlk_…")
    try:
        key, account = await plane.ask(
            lambda: plane.store.verify_api_key(
                credentials.credentials, pepper=plane.pepper, address=host
            )
        )
    except _GUESSES:
        if plane.guard is not None:
            plane.guard.failed(host)
        raise
    return Principal(key, account)


def requires(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, authenticated, whose key grants ``scope``."""

    async def dependency(principal: Principal = Depends(authenticate)) -> Principal:  # noqa: B008
        if not principal.may(scope):
            raise Forbidden(f"this API key lacks the {scope} scope")
        return principal

    dependency.__name__ = f"requires_{scope.replace(':', '_')}"
    return dependency
