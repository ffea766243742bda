"""/audit_events: the hash-chained audit log, filtered by time, actor and action, and
whether the chain still verifies. Operators only: events name every account."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from relay.control.api.auth import Principal, plane_of, requires
from relay.control.api.models import AuditEvent, AuditVerification, Page
from relay.control.api.paging import Cursor, Limit, cut
from relay.errors import AuditChainBroken, ConfigError

#: How long a verification may read the chain (other calls wait 5 s at most).
VERIFY_TIMEOUT = 300.0

router = APIRouter(prefix="/audit_events", tags=["audit_events"])

Filter = Annotated[str | None, Query(max_length=200)]


@router.get("", summary="List audit events, oldest first", response_model=Page[AuditEvent])
async def list_events(
    request: Request,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: Filter = None,
    action: Filter = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    principal: Principal = Depends(requires("audit:read")),  # noqa: B008
) -> Page[AuditEvent]:
    principal.must_be_operator("read the audit log")
    # A seq is a 64-bit integer in the store: a longer number is no cursor of a page.
    if cursor is not None and not (cursor.isdigit() and len(cursor) <= 18):
        raise ConfigError("cursor must be the next_cursor of an earlier page")
    since = _in_utc("since", since)
    until = _in_utc("until", until)
    plane = plane_of(request)
    fetched = await plane.ask(
        lambda: plane.store.audit.search(
            after_seq=int(cursor or 0),
            limit=limit + 1,
            since=since,
            until=until,
            actor=actor,
            action=action,
        )
    )
    items, next_cursor = cut(fetched, limit, lambda e: str(e.seq))
    events = [
        AuditEvent(
            seq=e.seq,
            at=e.at,
            actor=e.actor,
            action=e.action,
            target=e.target,
            detail=dict(e.detail),
            hash=e.hash,
        )
        for e in items
    ]
    return Page[AuditEvent](items=events, next_cursor=next_cursor)


def _in_utc(name: str, value: datetime | None) -> datetime | None:
    """``value`` in UTC; a clear 400 when it has no time zone or has no UTC time (a
    date at the edge of the calendar, shifted past it by its offset)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ConfigError(f"{name} needs a time zone, e.g. 2026-12-03T10:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ConfigError(f"{name} is out of range: {value.isoformat()}") from None


@router.get(
    "/verify",
    summary="Check the whole chain: any edit, deletion or reordering is found",
    response_model=AuditVerification,
)
async def verify(
    request: Request,
    principal: Principal = Depends(requires("audit:read")),  # noqa: B008
) -> AuditVerification:
    principal.must_be_operator("verify the audit log")
    plane = plane_of(request)
    audit = plane.store.audit
    seq, head_hash = await plane.ask(audit.head)
    try:
        # Reading every event of a long chain may take its time; a silent store is still
        # cut by the connection's own timeouts (relay/control/store.py).
        count = await plane.ask(audit.verify, timeout=VERIFY_TIMEOUT)
    except AuditChainBroken as exc:
        return AuditVerification(
            intact=False,
            events=max(0, (exc.seq or 1) - 1),
            head_seq=seq,
            head_hash=head_hash,
            code=exc.code,
            first_bad_seq=exc.seq,
            message=exc.message,
        )
    return AuditVerification(intact=True, events=count, head_seq=seq, head_hash=head_hash)
