"""The API's request and response bodies (pydantic), one per resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from relay.control.store import (
    AccountRecord,
    ApiKeyRecord,
    ReservedAddrRecord,
    ReservedDomainRecord,
    TokenRecord,
)

T = TypeVar("T")

#: The most items one page holds.
MAX_PAGE = 500


class Page(BaseModel, Generic[T]):
    """One page of a list; ask again with ``cursor=next_cursor`` until it is null."""

    items: list[T]
    next_cursor: str | None


class Strict(BaseModel):
    """Request bodies refuse fields they do not know: a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid")


# -- accounts ------------------------------------------------------------------------------


class Account(BaseModel):
    id: str
    name: str
    role: Literal["operator", "member"]
    status: Literal["active", "suspended"]
    created_at: datetime
    suspended_at: datetime | None

    @classmethod
    def of(cls, r: AccountRecord) -> Account:
        return cls(
            id=r.id,
            name=r.name,
            role=r.role,
            status=r.status,
            created_at=r.created_at,
            suspended_at=r.suspended_at,
        )


class AccountCreate(Strict):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    role: Literal["operator", "member"] = "member"


# -- credentials (authtokens) and API keys -------------------------------------------------


class _Secret(BaseModel):
    """What authtokens and API keys share: an owner, a life, and where they were last used
    (never the secret: only its salted hash is stored)."""

    id: str
    account_id: str
    description: str
    status: Literal["active", "revoked", "expired"]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    last_used_addr: str | None

    @staticmethod
    def _common(r: TokenRecord | ApiKeyRecord) -> dict[str, Any]:
        return {
            "id": r.id,
            "account_id": r.account_id,
            "description": r.description,
            "status": r.status,
            "created_at": r.created_at,
            "expires_at": r.expires_at,
            "revoked_at": r.revoked_at,
            "last_used_at": r.last_used_at,
            "last_used_addr": r.last_used_addr,
        }


class Credential(_Secret):
    """An authtoken: what an agent presents to the edge."""

    bind_acl: list[str]

    @classmethod
    def of(cls, r: TokenRecord) -> Credential:
        return cls(**cls._common(r), bind_acl=list(r.bind_acl))


class VerifiedCredential(Credential):
    """An authtoken an edge verified, with its account's role: an edge limits what a
    member account may hold, not an operator's (relay/edge/account_limits.py)."""

    account_role: Literal["operator", "member"] = Field(
        description="The role of the token's account: an edge limits what a member's "
        "agents hold (max_sessions_per_account, …), not an operator's."
    )

    @classmethod
    def verified(cls, r: TokenRecord) -> VerifiedCredential:
        if r.account_role == "operator":
            role: Literal["operator", "member"] = "operator"
        elif r.account_role == "member":
            role = "member"
        else:
            raise ValueError(f"a verified token's account has no role: {r.account_role!r}")
        return cls(**cls._common(r), bind_acl=list(r.bind_acl), account_role=role)


class CredentialCreated(Credential):
    token: str = Field(description="The authtoken itself: shown this once, never stored.")


class CredentialCreate(Strict):
    account_id: str | None = Field(None, max_length=16, description="Default: the key's own.")
    description: str = Field("", max_length=256)
    expires_at: datetime | None = None
    bind_acl: list[str] | None = Field(None, max_length=64)


class ApiKey(_Secret):
    """A key for this API, with the scopes it grants."""

    scopes: list[str]

    @classmethod
    def of(cls, r: ApiKeyRecord) -> ApiKey:
        return cls(**cls._common(r), scopes=list(r.scopes))


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The API key itself: shown this once, never stored.")


class ApiKeyCreate(Strict):
    account_id: str | None = Field(None, max_length=16, description="Default: the key's own.")
    scopes: list[str] = Field(min_length=1, max_length=16)
    description: str = Field("", max_length=256)
    expires_at: datetime | None = None


# -- audit ---------------------------------------------------------------------------------


class AuditEvent(BaseModel):
    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    hash: str


class AuditVerification(BaseModel):
    intact: bool
    events: int = Field(description="Events checked (all of them when intact).")
    head_seq: int
    head_hash: str = Field(
        description="Keep it elsewhere: a chain cut at its tail is only "
        "seen against a head recorded earlier."
    )
    code: str | None = None
    first_bad_seq: int | None = None
    message: str | None = None


# -- the edge's live state -----------------------------------------------------------------


class TunnelSession(BaseModel):
    id: str
    account_id: str
    credential_id: str
    peer: str
    region: str | None
    endpoints: list[str]


class NodeReload(BaseModel):
    node: str = Field(description="A node of the cluster, a worker of the edge, or `edge`.")
    answered: bool = Field(description="False: it did not answer within 1.5 s.")
    applied: list[str] = Field(description="Settings that changed.")
    kept: list[str] = Field(description="Settings changed in the file that need a restart.")
    refused: str | None = Field(description="Why nothing changed (a bad file, draining).")


class Reloaded(BaseModel):
    nodes: list[NodeReload]


class Endpoint(BaseModel):
    id: str
    url: str
    kind: str
    tunnel_session_id: str | None
    account_id: str | None


class Certificate(BaseModel):
    name: str
    not_after: datetime | None
    status: Literal["issued", "pending"]


# -- reserved domains and TCP addresses ----------------------------------------------------

REGION_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"


class ReservedDomain(BaseModel):
    id: str
    account_id: str
    domain: str
    certificate_mode: Literal["auto", "manual"]
    region: str | None
    created_at: datetime

    @classmethod
    def of(cls, r: ReservedDomainRecord) -> ReservedDomain:
        return cls(
            id=r.id,
            account_id=r.account_id,
            domain=r.domain,
            certificate_mode=r.certificate_mode,
            region=r.region,
            created_at=r.created_at,
        )


class ReservedDomainCreate(Strict):
    domain: str = Field(
        min_length=1,
        max_length=253,
        description="An exact name (app.example.com) or a wildcard (*.example.com).",
    )
    account_id: str | None = Field(None, max_length=16, description="Default: the key's own.")
    certificate_mode: Literal["auto", "manual"] = Field(
        "auto",
        description="auto: the edge issues the certificate; manual: the operator supplies "
        "its files.",
    )
    region: str | None = Field(
        None,
        max_length=32,
        pattern=REGION_PATTERN,
        description="The region it is pinned to, e.g. eu (stored; enforced by clusters).",
    )


class ReservedAddr(BaseModel):
    id: str
    account_id: str
    port: int
    region: str | None
    created_at: datetime

    @classmethod
    def of(cls, r: ReservedAddrRecord) -> ReservedAddr:
        return cls(
            id=r.id, account_id=r.account_id, port=r.port, region=r.region, created_at=r.created_at
        )


class ReservedAddrCreate(Strict):
    port: int = Field(ge=1, le=65535, strict=True)
    account_id: str | None = Field(None, max_length=16, description="Default: the key's own.")
    region: str | None = Field(
        None,
        max_length=32,
        pattern=REGION_PATTERN,
        description="The region it is pinned to, e.g. eu (stored; enforced by clusters).",
    )
