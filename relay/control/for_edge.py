"""What an edge asks of its control plane, through one interface, wherever it runs.

In-process (the default, :class:`LocalControl`): the edge holds the store and the pepper
itself. Remote (:class:`RemoteControl`): the store and the pepper live in a separate
`relay control` process, and the edge asks it over HTTP(S) with an API key that has the
``edge`` scope; the edge then never sees the pepper or the database.

Either way the edge's once-a-second credential watch asks :meth:`inactive_tokens` about
its live sessions, so a revoked token or a suspended account ends its sessions within 2 s,
and :meth:`reservation_changes` which names were reserved or released since it last asked,
so a reservation made elsewhere acts on live endpoints within 2 s too
(relay/edge/live_reservations.py). Answers about reservations are reused for up to
``RESERVATION_TTL`` (1 s), and forgotten as soon as a change is read; credentials are
asked about every second and never cached. When a remote control plane cannot be
reached, the edge keeps its live sessions (it has no news that any credential ended) and
refuses new agents (it cannot verify them), and says so once per outage.
Audit events from a remote edge are queued and sent in batches, off the event loop
(relay/control/audit_queue.py). An edge holding a PostgreSQL store itself asks it off the
loop too, each call bounded in time (relay/control/store_thread.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from relay.api_client import ApiClient
from relay.control.audit_queue import AuditQueue
from relay.control.reserved import ReservationChanges
from relay.control.store import Store, TokenRecord
from relay.control.store_thread import StoreCalls
from relay.errors import AuthError, ControlUnavailable, RelayError

log = logging.getLogger("relay.control.for_edge")

#: How long a remote edge reuses an answer about reservations: every bind asks, and a
#: burst of reconnecting agents would otherwise ask the control plane once per endpoint.
#: Forgotten as soon as the edge reads that a reservation changed; a bind that used a
#: stale answer meanwhile is checked again (relay/edge/live_reservations.py).
RESERVATION_TTL = 1.0
#: Reservation answers kept at most (the cache is emptied when full).
MAX_CACHED_OWNERS = 10_000
#: Events sent in one request.
AUDIT_BATCH = 500

T = TypeVar("T")


@dataclass(frozen=True)
class Reservation:
    """Who holds a reservation, and the region its traffic is pinned to (None: any)."""

    account_id: str
    region: str | None = None


class EdgeControl(Protocol):
    """The control plane as an edge uses it."""

    async def verify_token(self, token: str, *, peer: str, address: str | None) -> TokenRecord:
        """The token's record, or the AuthError that says why not (audited there)."""
        ...

    async def inactive_tokens(self, token_ids: Collection[str]) -> Mapping[str, str]:
        """Which of ``token_ids`` may no longer be used, and why (revoked, expired,
        suspended)."""
        ...

    async def reservation_owner(self, kind: str, name: str | int) -> Reservation | None:
        """The reservation that covers a hostname (exact, then the nearest wildcard) or a
        TCP port: its account and region pin; None when it is not reserved."""
        ...

    async def pins_under(self, wildcard: str, region: str) -> dict[str, str | None]:
        """Asked once per bind of a wildcard on an edge of ``region``: the names and
        narrower wildcards under it reserved with a pin to another region (→ that region),
        and those under such a pin that are servable here again (→ None); empty when no
        reservation under it is pinned elsewhere (Store.pins_under)."""
        ...

    async def reserved_ports(self) -> set[int]:
        """Every reserved TCP port (never handed out at random)."""
        ...

    async def reservation_changes(self, after: int | None, limit: int) -> ReservationChanges:
        """The domains and ports reserved or released since ``after`` (the mark of the
        last answer; None: the edge knows none yet), at most ``limit`` events."""
        ...

    async def reservation_owners(
        self, hostnames: Collection[str], ports: Collection[int]
    ) -> tuple[dict[str, Reservation], dict[int, Reservation]]:
        """:meth:`reservation_owner` for many live names and ports at once (each at most
        ``reserved.MAX_ASKED``), never from a cache: the reserved ones only."""
        ...

    def forget_reservations(self) -> None:
        """A reservation changed: answers kept about reservations are stale."""
        ...

    def audit(
        self, actor: str, action: str, target: str, detail: Mapping[str, Any] | None = None
    ) -> None:
        """Record an event (remote: queued, sent soon)."""
        ...

    def ping(self) -> None:
        """Raise unless the control plane answers (readiness)."""
        ...

    async def close(self) -> None: ...


class LocalControl:
    """The store and the pepper in the edge's own process. On SQLite each call is one
    short transaction (well under a millisecond), run on the event loop. A store across a
    network (PostgreSQL) is asked on a thread of its own, each call bounded in time
    (relay/control/store_thread.py), its audit events queued and written in order
    (relay/control/audit_queue.py) and its readiness pinged every two seconds:
    a database that stops answering never holds the edge's event loop."""

    def __init__(self, store: Store, pepper: bytes) -> None:
        self.store = store
        self.pepper = pepper
        self._call = StoreCalls(store)
        self._audit: AuditQueue | None = None
        if self._call.thread is not None:
            # One event per write: a batch that failed halfway would be written twice.
            self._audit = AuditQueue(self._write_events, batch=1, what="store")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._call.start(loop)
        if self._audit is not None:
            self._audit.start(loop)

    async def verify_token(self, token: str, *, peer: str, address: str | None) -> TokenRecord:
        return await self._call(
            lambda: self.store.verify_token(
                token, pepper=self.pepper, actor=f"agent@{peer}", address=address
            )
        )

    async def inactive_tokens(self, token_ids: Collection[str]) -> Mapping[str, str]:
        return await self._call(lambda: self.store.inactive_tokens(token_ids))

    async def reservation_owner(self, kind: str, name: str | int) -> Reservation | None:
        owner = await self._call(lambda: self.store.bind_owner(kind, name))
        return Reservation(owner.account_id, owner.region) if owner is not None else None

    async def pins_under(self, wildcard: str, region: str) -> dict[str, str | None]:
        return await self._call(lambda: self.store.pins_under(wildcard, region))

    async def reserved_ports(self) -> set[int]:
        return await self._call(self.store.reserved_ports)

    async def reservation_changes(self, after: int | None, limit: int) -> ReservationChanges:
        return await self._call(lambda: self.store.reservation_changes(after, limit))

    async def reservation_owners(
        self, hostnames: Collection[str], ports: Collection[int]
    ) -> tuple[dict[str, Reservation], dict[int, Reservation]]:
        names, held = await self._call(lambda: self.store.reservation_owners(hostnames, ports))
        return (
            {n: Reservation(r.account_id, r.region) for n, r in names.items()},
            {p: Reservation(r.account_id, r.region) for p, r in held.items()},
        )

    def forget_reservations(self) -> None:
        pass  # nothing kept: every answer comes from the store

    def audit(
        self, actor: str, action: str, target: str, detail: Mapping[str, Any] | None = None
    ) -> None:
        if self._audit is not None:
            self._audit.put(actor, action, target, detail)
        else:
            self.store.audit.append(actor, action, target, detail)

    async def _write_events(self, batch: list[dict[str, Any]]) -> None:
        def write() -> None:
            for e in batch:
                self.store.audit.append(e["actor"], e["action"], e["target"], e["detail"])

        await self._call(write)

    def ping(self) -> None:
        self._call.ping()

    async def close(self) -> None:
        if self._audit is not None:
            await self._audit.close()
        await self._call.close()
        self.store.close()


class RemoteControl:
    """A `relay control` process, asked over HTTP(S) from worker threads, so that a slow
    or unreachable control plane never stalls the edge's event loop."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self._audit = AuditQueue(self._send_events, batch=AUDIT_BATCH, what="control plane")
        self.reachable = True
        self._owners: dict[tuple[str, str], tuple[float, Reservation | None]] = {}
        self._ports: tuple[float, set[int]] | None = None
        #: Raised by :meth:`forget_reservations`. An answer is kept only if this did not
        #: change while it was asked for: one fetched across a forget may predate the
        #: change that caused it, and kept it would be reused for up to RESERVATION_TTL
        #: by binds that began after the change (which nothing would check again).
        self._generation = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._audit.start(loop)

    async def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        """The control plane's answer; an AuthError it gives passes through, anything
        else that goes wrong is ControlUnavailable (the agent retries later)."""
        try:
            answer = await asyncio.to_thread(self.client.post, path, json=body)
        except AuthError:
            self.reachable = True
            raise
        except (RelayError, OSError) as exc:
            self.reachable = False
            message = exc.message if isinstance(exc, RelayError) else str(exc)
            raise ControlUnavailable(f"the control plane did not answer: {message}") from None
        self.reachable = True
        return answer

    async def verify_token(self, token: str, *, peer: str, address: str | None) -> TokenRecord:
        body = {"token": token, "peer": peer, "address": address}
        return token_record(await self._post("/edge/verify_token", body))

    async def inactive_tokens(self, token_ids: Collection[str]) -> Mapping[str, str]:
        answer = await self._post("/edge/inactive_tokens", {"ids": sorted(token_ids)})
        return {str(k): str(v) for k, v in answer["inactive"].items()}

    async def reservation_owner(self, kind: str, name: str | int) -> Reservation | None:
        key = (kind, str(name))
        now = time.monotonic()
        cached = self._owners.get(key)
        if cached is not None and now - cached[0] < RESERVATION_TTL:
            return cached[1]
        generation = self._generation
        answer = await self._post("/edge/reservation_owner", {"kind": kind, "name": str(name)})
        owner = (
            Reservation(str(answer["account_id"]), answer.get("region"))
            if answer["account_id"] is not None
            else None
        )
        if generation != self._generation:
            return owner  # fresh enough for this bind (checked again: its epoch), not kept
        if len(self._owners) >= MAX_CACHED_OWNERS:
            self._owners.clear()
        self._owners[key] = (now, owner)
        return owner

    async def pins_under(self, wildcard: str, region: str) -> dict[str, str | None]:
        # Not cached: asked once per bind of a wildcard, not once per visitor.
        answer = await self._post("/edge/pins_under", {"wildcard": wildcard, "region": region})
        return {
            str(name): (None if pin is None else str(pin)) for name, pin in answer["pins"].items()
        }

    async def reserved_ports(self) -> set[int]:
        now = time.monotonic()
        if self._ports is not None and now - self._ports[0] < RESERVATION_TTL:
            return self._ports[1]
        generation = self._generation
        answer = await self._post("/edge/reserved_ports", {})
        ports = {int(p) for p in answer["ports"]}
        if generation == self._generation:  # not kept if fetched across a forget
            self._ports = (now, ports)
        return ports

    async def reservation_changes(self, after: int | None, limit: int) -> ReservationChanges:
        answer = await self._post("/edge/reservation_changes", {"after": after, "limit": limit})
        return ReservationChanges(
            int(answer["mark"]),
            tuple(str(d) for d in answer["domains"]),
            tuple(int(p) for p in answer["ports"]),
            everything=bool(answer["everything"]),
            more=bool(answer["more"]),
            # A control plane that does not say: nothing ends another account's endpoint
            # at once (it is refused at its next bind).
            operator_domains=tuple(str(d) for d in answer.get("operator_domains", ())),
            operator_ports=tuple(int(p) for p in answer.get("operator_ports", ())),
        )

    async def reservation_owners(
        self, hostnames: Collection[str], ports: Collection[int]
    ) -> tuple[dict[str, Reservation], dict[int, Reservation]]:
        body = {"names": sorted(hostnames), "ports": sorted(ports)}
        answer = await self._post("/edge/reservation_owners", body)
        return (
            {str(n): _reservation(o) for n, o in answer["names"].items()},
            {int(p): _reservation(o) for p, o in answer["ports"].items()},
        )

    def forget_reservations(self) -> None:
        self._generation += 1  # answers in flight now are not kept either
        self._owners.clear()
        self._ports = None

    def audit(
        self, actor: str, action: str, target: str, detail: Mapping[str, Any] | None = None
    ) -> None:
        self._audit.put(actor, action, target, detail)

    def ping(self) -> None:
        if not self.reachable:
            raise ConnectionError("the control plane did not answer the last request")

    async def _send_events(self, batch: list[dict[str, Any]]) -> None:
        await self._post("/edge/audit_events", {"events": batch})

    async def flush(self, timeout: float = 5.0) -> None:
        """Send what is queued (at shutdown), for at most ``timeout`` seconds."""
        await self._audit.flush(timeout)

    async def close(self) -> None:
        await self._audit.close()


def _reservation(owner: Mapping[str, Any]) -> Reservation:
    region = owner.get("region")
    return Reservation(str(owner["account_id"]), None if region is None else str(region))


def token_record(answer: Mapping[str, Any]) -> TokenRecord:
    """A TokenRecord from its JSON form (the API's Credential)."""

    def when(key: str) -> datetime | None:
        value = answer.get(key)
        return datetime.fromisoformat(value) if value else None

    created = when("created_at")
    assert created is not None
    return TokenRecord(
        id=str(answer["id"]),
        description=str(answer["description"]),
        created_at=created,
        expires_at=when("expires_at"),
        revoked_at=when("revoked_at"),
        last_used_at=when("last_used_at"),
        bind_acl=tuple(answer["bind_acl"]),
        account_id=str(answer["account_id"]),
        last_used_addr=answer.get("last_used_addr"),
        # A control plane before roles were sent says nothing: None, the edge's limits
        # per account then apply to no one (relay/edge/account_limits.py).
        account_role=_role(answer.get("account_role")),
    )


def _role(value: object) -> str | None:
    return value if value in ("operator", "member") else None
