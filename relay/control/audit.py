"""Append-only, hash-chained audit log.

Every event stores ``hash = sha256(canonical_json(seq, at, actor, action, target, detail,
prev_hash))`` where ``prev_hash`` is the previous event's hash (64 zeros for the first). Editing or
deleting any event breaks the chain at that point, which :meth:`AuditLog.verify` reports.

What the chain does *not* do on its own: detect removal of the newest events (truncation), or a
writer who recomputes every later hash. For that, export :meth:`AuditLog.head` somewhere the
database's writers can't reach (a later issue can key the hash or sign checkpoints).

Layering: this module is the bottom of the control plane. It owns its table and a function that
appends inside a caller's transaction (:func:`append_event`), so that :mod:`relay.control.store`
can record "token created" in the same transaction that creates the token — the two commit
together or not at all. ``at`` is kept as the canonical ISO-8601 string the hash was computed
over, so no database's datetime round-trip can change what verification sees.

Events must never contain secrets: callers pass token *ids*, never token plaintexts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Column, Connection, Integer, MetaData, String, Table, Text, select

from relay.errors import AuditChainBroken

if TYPE_CHECKING:
    from relay.control.store import Store

__all__ = [
    "GENESIS_HASH",
    "AuditChainBroken",
    "AuditEvent",
    "AuditLog",
    "append_event",
    "audit_metadata",
    "audit_table",
    "event_hash",
]

GENESIS_HASH = "0" * 64

audit_metadata = MetaData()

audit_table = Table(
    "audit_events",
    audit_metadata,
    # Assigned explicitly (last + 1) rather than by the database: the hash covers seq, so it must
    # be known before the insert, and the primary key then turns two racing appenders into an
    # IntegrityError (retried by Store.run_in_transaction) instead of a forked chain.
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(40), nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)


@dataclass(frozen=True)
class AuditEvent:
    """One audit log entry, as stored."""

    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: Mapping[str, Any] = field(hash=False)
    prev_hash: str
    hash: str


def _format_at(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _normalize_detail(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """Round-trip through JSON so the hash covers exactly what the JSON column will return."""
    if detail is None:
        return {}
    out = json.loads(json.dumps(dict(detail), allow_nan=False))
    assert isinstance(out, dict)
    return out


def event_hash(
    seq: int,
    at: str,
    actor: str,
    action: str,
    target: str,
    detail: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """Hex SHA-256 of the canonical JSON of an event (sorted keys, no spaces, ASCII only)."""
    canonical = json.dumps(
        [seq, at, actor, action, target, detail, prev_hash],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


#: The PostgreSQL advisory lock key appenders take turns on ("relayaud" as an integer).
AUDIT_APPEND_LOCK = int.from_bytes(b"relayaud", "big") & 0x7FFF_FFFF_FFFF_FFFF


def append_event(
    conn: Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event inside the caller's transaction and return it."""
    if conn.dialect.name == "postgresql":
        # Appenders take turns until their transaction ends, so no two read the same head:
        # without this, concurrent writers collide on the next seq and replay, and under
        # load some run out of retries. (SQLite's writers are serial: BEGIN IMMEDIATE.)
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({AUDIT_APPEND_LOCK})")
    last = conn.execute(
        select(audit_table.c.seq, audit_table.c.hash).order_by(audit_table.c.seq.desc()).limit(1)
    ).first()
    seq = 1 if last is None else int(last.seq) + 1
    prev_hash = GENESIS_HASH if last is None else str(last.hash)
    at_s = _format_at(at)
    detail_n = _normalize_detail(detail)
    digest = event_hash(seq, at_s, actor, action, target, detail_n, prev_hash)
    conn.execute(
        audit_table.insert().values(
            seq=seq,
            at=at_s,
            actor=actor,
            action=action,
            target=target,
            detail=detail_n,
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    return AuditEvent(
        seq=seq,
        at=datetime.fromisoformat(at_s),
        actor=actor,
        action=action,
        target=target,
        detail=detail_n,
        prev_hash=prev_hash,
        hash=digest,
    )


class AuditLog:
    """The audit log of one :class:`~relay.control.store.Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def append(
        self,
        actor: str,
        action: str,
        target: str,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Append an event in its own short transaction."""
        return self._store.run_in_transaction(
            lambda conn: append_event(
                conn,
                at=self._store.now(),
                actor=actor,
                action=action,
                target=target,
                detail=detail,
            )
        )

    def events(self, *, after_seq: int = 0, limit: int | None = None) -> list[AuditEvent]:
        """Events with ``seq > after_seq`` in order (for listing and export)."""
        stmt = select(audit_table).where(audit_table.c.seq > after_seq).order_by(audit_table.c.seq)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._store.engine.connect() as conn:
            return [_row_to_event(row._mapping) for row in conn.execute(stmt)]

    def search(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[AuditEvent]:
        """Events with ``seq > after_seq`` in order, at ``since`` or later and before
        ``until``, by ``actor`` and of ``action`` when given. ``at`` is stored as the
        fixed-width ISO string the hash covers, so comparing the strings compares times."""
        table = audit_table
        stmt = select(table).where(table.c.seq > after_seq)
        if since is not None:
            stmt = stmt.where(table.c.at >= _format_at(since))
        if until is not None:
            stmt = stmt.where(table.c.at < _format_at(until))
        if actor is not None:
            stmt = stmt.where(table.c.actor == actor)
        if action is not None:
            stmt = stmt.where(table.c.action == action)
        stmt = stmt.order_by(table.c.seq).limit(limit)
        with self._store.engine.connect() as conn:
            return [_row_to_event(row._mapping) for row in conn.execute(stmt)]

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest event, ``(0, GENESIS_HASH)`` when empty.

        Export this elsewhere to detect truncation, which the chain alone cannot.
        """
        with self._store.engine.connect() as conn:
            last = conn.execute(
                select(audit_table.c.seq, audit_table.c.hash)
                .order_by(audit_table.c.seq.desc())
                .limit(1)
            ).first()
        return (0, GENESIS_HASH) if last is None else (int(last.seq), str(last.hash))

    def verify(self) -> int:
        """Check the whole chain; return the number of events.

        Raises :class:`~relay.errors.AuditChainBroken` naming the first bad ``seq`` if an event
        was altered, inserted or removed (except at the tail — see the module docstring).
        """
        count = 0
        with self._store.engine.connect() as conn:
            for seq, problem in _check_rows(conn):
                if problem is not None:
                    raise AuditChainBroken(f"audit event {seq}: {problem}", seq=seq)
                count += 1
        return count


def _check_rows(conn: Connection) -> Iterator[tuple[int, str | None]]:
    expected_seq = 1
    prev_hash = GENESIS_HASH
    for row in conn.execute(select(audit_table).order_by(audit_table.c.seq)):
        m = row._mapping
        seq = int(m["seq"])
        if seq != expected_seq:
            yield expected_seq, "missing (sequence gap)"
            return
        if m["prev_hash"] != prev_hash:
            yield seq, "prev_hash does not match the previous event (event removed or altered)"
            return
        detail = m["detail"]
        if not isinstance(detail, dict):
            yield seq, "detail is not a JSON object"
            return
        digest = event_hash(
            seq, m["at"], m["actor"], m["action"], m["target"], detail, m["prev_hash"]
        )
        if digest != m["hash"]:
            yield seq, "hash mismatch (event altered)"
            return
        yield seq, None
        prev_hash = str(m["hash"])
        expected_seq += 1


def _row_to_event(m: Mapping[Any, Any]) -> AuditEvent:
    return AuditEvent(
        seq=int(m["seq"]),
        at=datetime.fromisoformat(m["at"]),
        actor=m["actor"],
        action=m["action"],
        target=m["target"],
        detail=m["detail"],
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )
