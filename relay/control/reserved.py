"""Reserved names: domains (exact or wildcard) and TCP ports that belong to one account.

A reservation is how ownership of a public name is expressed: a bind of a reserved name by
another account is refused (RLY_207), and a name outside the edge's base domain can only be
bound by the account that reserved it. A token's bind ACL still restricts what that
token may bind on top. Unreserved names under the base domain stay first come, first
served (the edge knows its base domain; this module does not).

A wildcard ``*.example.com`` covers every name under ``example.com``, at any depth, as the
edge's router does (relay/edge/routes.py): a reservation must cover exactly the names the
router would send to an endpoint of that wildcard. The reservation that decides a name is
its exact one, else the nearest wildcard (the longest suffix), again as the router picks.
So that no account can take a name from under another's wildcard, all reservations that
cover one another belong to one account: reserving ``a.example.com`` under another
account's ``*.example.com``, or ``*.example.com`` over another account's
``a.example.com``, is a :class:`~relay.errors.Conflict`.

Like :mod:`relay.control.accounts`, every function takes the caller's
:class:`~sqlalchemy.Connection` and runs inside its transaction; the store owns the
transactions.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import Connection, delete, func, select

from relay.control import tokens
from relay.control.accounts import account_for_grant
from relay.control.audit import append_event, audit_table
from relay.control.tables import (
    accounts_table,
    api_keys_table,
    reserved_addrs_table,
    reserved_domains_table,
)
from relay.errors import ConfigError, Conflict, NotFound

__all__ = [
    "CERTIFICATE_MODES",
    "CertificateMode",
    "ReservationChanges",
    "ReservationRecord",
    "ReservedAddrRecord",
    "ReservedDomainRecord",
    "covering_names",
    "decisive_pins",
    "shared_domain_covered",
    "validate_domain",
    "validate_port",
    "validate_region",
]

CertificateMode = Literal["auto", "manual"]
CERTIFICATE_MODES: tuple[CertificateMode, ...] = get_args(CertificateMode)
DOMAIN_ID_PREFIX = "rd_"
ADDR_ID_PREFIX = "ra_"
HOST_KINDS = frozenset({"http", "https", "tls"})
MAX_DOMAIN = 253
MAX_REGION = 32

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# Two labels at least: a reservation of a bare TLD ("com", "*.com") would claim a
# namespace no one account owns.
_DOMAIN_RE = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})+")
_REGION_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
#: The PostgreSQL advisory lock key reservers take turns on ("relayres" as an integer):
#: the overlap checks read other rows, which a unique constraint alone cannot guard.
RESERVE_LOCK = int.from_bytes(b"relayres", "big") & 0x7FFF_FFFF_FFFF_FFFF
#: The audit actions that change what a bind would be told (the change feed's events).
CHANGE_ACTIONS = (
    "reserved_domain.create",
    "reserved_domain.release",
    "reserved_addr.create",
    "reserved_addr.release",
)
#: Changes one read of the feed returns at most, and names or ports one owners' question
#: may ask about (each name costs up to a candidate per label: chunked below).
MAX_CHANGES = 1000
MAX_ASKED = 1000
#: Values in one ``IN (…)``: SQLite's limit on bound parameters was 999 before 3.32.
_IN_CHUNK = 500


@dataclass(frozen=True)
class ReservedDomainRecord:
    """A domain reserved for an account: exact (``app.example.com``) or a wildcard
    (``*.example.com``)."""

    id: str
    account_id: str
    domain: str
    certificate_mode: CertificateMode
    region: str | None
    created_at: datetime


@dataclass(frozen=True)
class ReservedAddrRecord:
    """A TCP port reserved for an account."""

    id: str
    account_id: str
    port: int
    region: str | None
    created_at: datetime


ReservationRecord = ReservedDomainRecord | ReservedAddrRecord


# -- validation ----------------------------------------------------------------------------


def validate_domain(domain: object) -> str:
    """A reservable domain, lowercased (a trailing dot dropped): an exact name of two
    labels or more, or ``*.`` and such a name; not an IP address. :class:`ConfigError`
    otherwise."""
    if not isinstance(domain, str):
        raise ConfigError("a domain must be a string")
    name = domain.strip().lower().rstrip(".")
    shown = name if len(name) <= 64 else name[:64] + "…"
    if len(name) > MAX_DOMAIN or _DOMAIN_RE.fullmatch(name) is None:
        raise ConfigError(
            f"invalid domain {shown!r}: give a name like app.example.com or a wildcard "
            "like *.example.com"
        )
    if name.rsplit(".", 1)[1].isdigit():
        raise ConfigError(f"{shown!r} is an IP address, not a domain")
    return name


def validate_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError("a TCP port is a whole number from 1 to 65535")
    return port


def validate_region(region: object) -> str | None:
    """A region id such as ``eu`` or ``us-cal-1``, or None (not pinned)."""
    if region is None:
        return None
    if (
        not isinstance(region, str)
        or not 1 <= len(region) <= MAX_REGION
        or _REGION_RE.fullmatch(region) is None
    ):
        raise ConfigError(f"a region is 1 to {MAX_REGION} of a-z, 0-9 and '-' (e.g. eu, us-cal-1)")
    return region


def _certificate_mode(mode: object) -> CertificateMode:
    for known in CERTIFICATE_MODES:
        if mode == known:
            return known
    raise ConfigError(f"certificate_mode must be one of {', '.join(CERTIFICATE_MODES)}")


def covering_names(hostname: str) -> list[str]:
    """The reservations that could decide ``hostname``, in the order they win: the name
    itself, then each wildcard above it from the nearest (``a.b.example.com`` →
    ``*.b.example.com``, ``*.example.com``, ``*.com``)."""
    name = hostname.strip().lower().rstrip(".")
    out = [name]
    dot = name.find(".")
    while dot != -1:
        wildcard = "*" + name[dot:]
        if wildcard not in out:
            out.append(wildcard)
        dot = name.find(".", dot + 1)
    return out


def shared_domain_covered(domain: str, shared: Collection[str]) -> str | None:
    """The shared domain (an edge's base domain, whose names accounts bind first come)
    whose every name the wildcard ``domain`` would take (``*.<base>``, or a wildcard
    above it), or None. A member may not reserve such a wildcard: one account would
    take every other account's next bind of a name there (relay/control/api)."""
    if not domain.startswith("*."):
        return None
    for base in shared:
        if domain in covering_names(f"name.{base}")[1:]:
            return base
    return None


# -- domains -------------------------------------------------------------------------------


def domain_record(m: Any) -> ReservedDomainRecord:
    return ReservedDomainRecord(
        id=m["id"],
        account_id=m["account_id"],
        domain=m["domain"],
        certificate_mode=_certificate_mode(m["certificate_mode"]),
        region=m["region"],
        created_at=m["created_at"],
    )


def get_reserved_domain(conn: Connection, reservation_id: str) -> ReservedDomainRecord:
    table = reserved_domains_table
    row = conn.execute(select(table).where(table.c.id == reservation_id)).first()
    if row is None:
        raise NotFound(f"no reserved domain with id {_shown(reservation_id)}")
    return domain_record(row._mapping)


def domain_owner(conn: Connection, hostname: str) -> ReservedDomainRecord | None:
    """The reservation deciding ``hostname`` (exact or wildcard): its own, else the
    nearest wildcard's; None when no reservation covers it."""
    candidates = covering_names(hostname)
    table = reserved_domains_table
    rows = conn.execute(select(table).where(table.c.domain.in_(candidates))).all()
    found = {row.domain: row for row in rows}
    for name in candidates:
        if name in found:
            return domain_record(found[name]._mapping)
    return None


def reserve_domain(
    conn: Connection,
    account_id: str | None,
    domain: str,
    *,
    certificate_mode: str,
    region: str | None,
    now: datetime,
    actor: str,
) -> ReservedDomainRecord:
    name = validate_domain(domain)
    mode = _certificate_mode(certificate_mode)
    pinned = validate_region(region)
    _take_turns(conn)
    account = account_for_grant(conn, account_id)
    table = reserved_domains_table
    if conn.execute(select(table.c.id).where(table.c.domain == name)).first() is not None:
        raise Conflict(f"{name} is already reserved")
    above = domain_owner(conn, name)
    if above is not None and above.account_id != account.id:
        raise Conflict(f"{name} falls under {above.domain}, which another account reserved")
    if name.startswith("*."):
        under = conn.execute(
            select(table.c.domain)
            .where(table.c.domain.endswith(name[1:], autoescape=True))
            .where(table.c.account_id != account.id)
            .limit(1)
        ).first()
        if under is not None:
            raise Conflict(f"{name} would cover {under.domain}, which another account reserved")
    reservation_id = DOMAIN_ID_PREFIX + tokens.new_id()
    conn.execute(
        table.insert().values(
            id=reservation_id,
            account_id=account.id,
            domain=name,
            certificate_mode=mode,
            region=pinned,
            created_at=now,
        )
    )
    append_event(
        conn,
        at=now,
        actor=actor,
        action="reserved_domain.create",
        target=reservation_id,
        detail={
            "account_id": account.id,
            "domain": name,
            "certificate_mode": mode,
            "region": pinned,
        },
    )
    return get_reserved_domain(conn, reservation_id)


def release_domain(
    conn: Connection, reservation_id: str, *, now: datetime, actor: str
) -> ReservedDomainRecord:
    """Delete the reservation (the name is free for anyone to reserve again) and return it
    as it was."""
    record = get_reserved_domain(conn, reservation_id)
    table = reserved_domains_table
    conn.execute(delete(table).where(table.c.id == reservation_id))
    append_event(
        conn,
        at=now,
        actor=actor,
        action="reserved_domain.release",
        target=reservation_id,
        detail={"account_id": record.account_id, "domain": record.domain},
    )
    return record


# -- TCP addresses -------------------------------------------------------------------------


def addr_record(m: Any) -> ReservedAddrRecord:
    return ReservedAddrRecord(
        id=m["id"],
        account_id=m["account_id"],
        port=int(m["port"]),
        region=m["region"],
        created_at=m["created_at"],
    )


def get_reserved_addr(conn: Connection, reservation_id: str) -> ReservedAddrRecord:
    table = reserved_addrs_table
    row = conn.execute(select(table).where(table.c.id == reservation_id)).first()
    if row is None:
        raise NotFound(f"no reserved address with id {_shown(reservation_id)}")
    return addr_record(row._mapping)


def addr_owner(conn: Connection, port: int) -> ReservedAddrRecord | None:
    table = reserved_addrs_table
    row = conn.execute(select(table).where(table.c.port == port)).first()
    return None if row is None else addr_record(row._mapping)


def reserved_ports(conn: Connection) -> set[int]:
    return {int(p) for p in conn.execute(select(reserved_addrs_table.c.port)).scalars()}


def reserve_addr(
    conn: Connection,
    account_id: str | None,
    port: int,
    *,
    region: str | None,
    now: datetime,
    actor: str,
) -> ReservedAddrRecord:
    number = validate_port(port)
    pinned = validate_region(region)
    account = account_for_grant(conn, account_id)
    if addr_owner(conn, number) is not None:
        raise Conflict(f"tcp port {number} is already reserved")
    reservation_id = ADDR_ID_PREFIX + tokens.new_id()
    conn.execute(
        reserved_addrs_table.insert().values(
            id=reservation_id,
            account_id=account.id,
            port=number,
            region=pinned,
            created_at=now,
        )
    )
    append_event(
        conn,
        at=now,
        actor=actor,
        action="reserved_addr.create",
        target=reservation_id,
        detail={"account_id": account.id, "port": number, "region": pinned},
    )
    return get_reserved_addr(conn, reservation_id)


def release_addr(
    conn: Connection, reservation_id: str, *, now: datetime, actor: str
) -> ReservedAddrRecord:
    record = get_reserved_addr(conn, reservation_id)
    table = reserved_addrs_table
    conn.execute(delete(table).where(table.c.id == reservation_id))
    append_event(
        conn,
        at=now,
        actor=actor,
        action="reserved_addr.release",
        target=reservation_id,
        detail={"account_id": record.account_id, "port": record.port},
    )
    return record


# -- what the edge asks --------------------------------------------------------------------


def bind_owner(conn: Connection, kind: str, name_or_port: str | int) -> ReservationRecord | None:
    """The reservation covering what a bind asks for: a hostname for ``http``, ``https``
    and ``tls`` (one name across the three), a port for ``tcp``."""
    if kind in HOST_KINDS and isinstance(name_or_port, str):
        return domain_owner(conn, name_or_port)
    if kind == "tcp" and isinstance(name_or_port, int) and not isinstance(name_or_port, bool):
        return addr_owner(conn, name_or_port)
    raise ConfigError(f"no reservation can cover a {kind} bind of {name_or_port!r}")


def pins_under(conn: Connection, wildcard: str, region: str) -> dict[str, str | None]:
    """What an endpoint of ``wildcard`` bound in ``region`` must not serve: one query for
    the reservations strictly under it, reduced by :func:`decisive_pins`."""
    name = wildcard.strip().lower().rstrip(".")
    if not name.startswith("*.") or len(name) > MAX_DOMAIN:
        return {}
    table = reserved_domains_table
    rows = conn.execute(
        select(table.c.domain, table.c.region)
        .where(table.c.domain.endswith(name[1:], autoescape=True))
        .where(table.c.domain != name)
    ).all()
    return decisive_pins({row.domain: row.region for row in rows}, name, region)


def decisive_pins(
    covered: Mapping[str, str | None], wildcard: str, region: str
) -> dict[str, str | None]:
    """Of the reservations ``covered`` by ``wildcard`` (name → its pin), those whose
    answer differs from the reservation above them, as the edge's router asks them: the
    region a name (or a narrower wildcard's names) is pinned to when that is not
    ``region``, or None where a name under such a pin is servable here again (its own
    reservation is unpinned or pinned to ``region``). A name the map does not decide
    takes the wildcard's own answer (served here). Pruned, so that an account whose
    names under a wildcard are not pinned elsewhere costs the edge an empty map."""

    def refused(pin: str | None) -> str | None:
        return pin if pin is not None and pin != region else None

    out: dict[str, str | None] = {}
    for name, pin in covered.items():
        above: str | None = None  # the wildcard's own answer: served here
        for candidate in covering_names(name)[1:]:
            if candidate == wildcard:
                break
            if candidate in covered:
                above = refused(covered[candidate])
                break
        if refused(pin) != above:
            out[name] = refused(pin)
    return out


# -- live endpoints: what changed, and who holds it now ------------------------------------


@dataclass(frozen=True)
class ReservationChanges:
    """What the reservation events after a mark name: the domains (exact or wildcard) and
    ports reserved or released since, and the mark to ask from next time. ``everything``:
    the asker cannot know what changed (it had no mark, or its mark is past the newest
    event: another database) and must take every name as changed. ``more``: the events
    were cut at the limit; ask again from ``mark``.

    ``operator_domains`` and ``operator_ports``: of those, the ones an operator changed
    (an operator account's API key, or a writer of the store itself such as `relay
    control`'s CLI; see :func:`operator_actors`). Only such a change may end another
    account's live endpoint at once (RLY_207): a member's key reserving a first-come name
    or port that another account serves acts on that account's next bind, as before
    reservations acted on live endpoints, so that no member can take another account's
    live endpoints down at will."""

    mark: int
    domains: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    everything: bool = False
    more: bool = False
    operator_domains: tuple[str, ...] = ()
    operator_ports: tuple[int, ...] = ()


#: How the API names a key in the audit log (relay/control/api/auth.py Principal.actor).
API_KEY_ACTOR = "api_key:"


def operator_actors(conn: Connection, actors: Collection[str]) -> set[str]:
    """Of audit ``actors``, the operators': an API key whose account is an operator
    account, or any actor that is not an API key (it wrote to the store itself: `relay
    control`'s CLI, a script holding the database). A key not found is not an operator's."""
    keys = {a[len(API_KEY_ACTOR) :] for a in actors if a.startswith(API_KEY_ACTOR)}
    operators: set[str] = set()
    wanted = sorted(keys)
    for i in range(0, len(wanted), _IN_CHUNK):
        rows = conn.execute(
            select(api_keys_table.c.id)
            .join(accounts_table, accounts_table.c.id == api_keys_table.c.account_id)
            .where(api_keys_table.c.id.in_(wanted[i : i + _IN_CHUNK]))
            .where(accounts_table.c.role == "operator")
        )
        operators.update(API_KEY_ACTOR + str(key) for key in rows.scalars())
    return operators | {a for a in actors if not a.startswith(API_KEY_ACTOR)}


def changes_after(conn: Connection, after: int | None, limit: int) -> ReservationChanges:
    """The reservation events after audit event ``after``, from the audit log: every
    reservation and release appends its event in its own transaction, and appenders take
    turns until their transaction ends (relay/control/audit.py), so the events' order is
    the order they were committed in and a mark never skips one committed later. The
    newest seq is one index lookup; only the events after ``after`` are read (a second's
    worth for an edge that asks every second), whatever their action."""
    limit = max(1, min(limit, MAX_CHANGES))
    newest = int(conn.execute(select(func.max(audit_table.c.seq))).scalar() or 0)
    if after is None or after > newest:
        return ReservationChanges(newest, everything=True)
    if after == newest:
        return ReservationChanges(newest)
    rows = conn.execute(
        select(audit_table.c.seq, audit_table.c.actor, audit_table.c.detail)
        .where(audit_table.c.seq > after)
        .where(audit_table.c.seq <= newest)
        .where(audit_table.c.action.in_(CHANGE_ACTIONS))
        .order_by(audit_table.c.seq)
        .limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    operators = operator_actors(conn, {str(row.actor) for row in rows})
    domains: dict[str, None] = {}
    ports: dict[int, None] = {}
    by_operator_domains: dict[str, None] = {}
    by_operator_ports: dict[int, None] = {}
    for row in rows:
        detail = row.detail if isinstance(row.detail, Mapping) else {}
        domain, port = detail.get("domain"), detail.get("port")
        by_operator = str(row.actor) in operators
        if isinstance(domain, str) and 0 < len(domain) <= MAX_DOMAIN:
            domains[domain] = None
            if by_operator:
                by_operator_domains[domain] = None
        elif isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
            ports[port] = None
            if by_operator:
                by_operator_ports[port] = None
    mark = int(rows[-1].seq) if more else newest
    return ReservationChanges(
        mark,
        tuple(domains),
        tuple(ports),
        more=more,
        operator_domains=tuple(by_operator_domains),
        operator_ports=tuple(by_operator_ports),
    )


def owners_of(
    conn: Connection, hostnames: Collection[str], ports: Collection[int]
) -> tuple[dict[str, ReservedDomainRecord], dict[int, ReservedAddrRecord]]:
    """:func:`bind_owner` for many names and ports at once (those reserved only): the
    reservations each name's covering names hold, read in a few ``IN`` queries."""
    if len(hostnames) > MAX_ASKED or len(ports) > MAX_ASKED:
        raise ConfigError(f"ask about at most {MAX_ASKED} names and {MAX_ASKED} ports at once")
    wanted = {name: covering_names(name) for name in hostnames}
    candidates = sorted({c for names in wanted.values() for c in names})
    found: dict[str, ReservedDomainRecord] = {}
    table = reserved_domains_table
    for i in range(0, len(candidates), _IN_CHUNK):
        chunk = candidates[i : i + _IN_CHUNK]
        for row in conn.execute(select(table).where(table.c.domain.in_(chunk))):
            found[row.domain] = domain_record(row._mapping)
    names: dict[str, ReservedDomainRecord] = {}
    for name, covering in wanted.items():
        decisive = next((found[c] for c in covering if c in found), None)
        if decisive is not None:
            names[name] = decisive
    held: dict[int, ReservedAddrRecord] = {}
    numbers = sorted({validate_port(p) for p in ports})
    for i in range(0, len(numbers), _IN_CHUNK):
        rows = conn.execute(
            select(reserved_addrs_table).where(
                reserved_addrs_table.c.port.in_(numbers[i : i + _IN_CHUNK])
            )
        )
        for row in rows:
            record = addr_record(row._mapping)
            held[record.port] = record
    return names, held


def _take_turns(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        # SQLite's writers are serial already (BEGIN IMMEDIATE).
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({RESERVE_LOCK})")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")
