"""A reservation made or released while endpoints are live acts on them at once.

A bind asks the control plane who holds its name or port and where it is pinned
(``Edge._check_reserved``) and, for a wildcard, which names under it are pinned to other
regions (``Edge._pins_under``). Asked only then, a reservation made later would act on the
next bind alone: a name pinned to ``eu`` would go on being served by an agent bound in
``us``, a name reserved for one account by another account's agent. So every change is
applied to the live endpoints it decides, as their bind would be decided now:

* **What changed.** The control plane's audit log is the feed: every reservation and
  release appends its event in its own transaction, in commit order
  (relay/control/reserved.py ``changes_after``). The edge keeps the newest event it has
  read (``mark``) and asks for the names and ports changed after it, :data:`PAGE` events
  at a time.
* **When.** At once when a reservation is made or released through this edge's API, and
  on every other node of its cluster (the sealed ``reservations`` event, as
  ``credentials``) or every other worker of its edge (through the supervisor); and on
  every tick of the credential watch (``credential_check_interval``), the net for a
  control plane elsewhere (`relay control`) or a store other processes write, while the
  edge has any endpoint (an idle one does not ask; it reads on from its mark later). One read
  at a time; a change signalled during it gets one more read after it, so a burst of
  reservations costs a few reads, not one each. A read of an unchanged feed is one
  question to the control plane; nothing here runs per visitor or per byte.
* **What is checked.** Only the live endpoints a changed name can decide: that name, the
  names under a changed wildcard, the port; each is asked about again (a few questions
  for up to :data:`~relay.control.reserved.MAX_ASKED` names), and every wildcard endpoint
  above a changed name has its pins asked again (one question per wildcard).
* **What follows.** An endpoint whose name or port is now pinned to another region than
  this edge's (RLY_208), or reserved by another account (RLY_207) by an operator's change
  (``operator_domains``/``operator_ports`` of the feed: an operator account's API key, or
  a writer of the store itself), ends here, as its bind would now be refused. A member's
  key reserving what another account serves (a first-come name or port, a wildcard)
  does not end that account's endpoints: they are refused at their next bind, as before,
  so that no member can take another account's live endpoints down at will. An endpoint
  ended: removed from the routes, its port closed, its name given up in
  the cluster; logged, audited as ``endpoint.end``. The protocol has no message for one
  endpoint that ends, so each agent session serving it is told the least surprising way:
  a session that serves nothing else gets ``Stop`` with the code (the agent ends as its
  refused bind would end it, exit 4, and does not come back to be refused again); one
  that serves other endpoints keeps them and gets a ``Notice`` (level ``error``) naming
  the code and the URL. A wildcard's pins are replaced, so a name pinned elsewhere is
  refused at once (421 RLY_631, the TLS alert), and one released from its pin served
  again. A release never ends an endpoint it no longer covers (nothing is reserved for
  anyone there now); it ends one only where a reservation that still covers it, e.g. a
  pinned wildcard above, now decides it.

A bind under way while a change is read may have asked before the change was committed
and be registered after the check looked: ``epoch`` tells it, and it is checked again
once bound (:meth:`LiveReservations.bound`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, TypeGuard

from relay.control.for_edge import Reservation
from relay.control.reserved import MAX_ASKED, covering_names
from relay.edge.coalesced import Coalesced
from relay.edge.routes import HostEndpoint
from relay.edge.tcp import TcpEndpoint
from relay.errors import NameReserved, RegionPinned, RelayError
from relay.protocol import EndpointEnded, Notice

if TYPE_CHECKING:
    from relay.edge.server import Edge
    from relay.edge.session import AgentSession

log = logging.getLogger("relay.edge.reservations")

#: Reservation events read in one question to the control plane.
PAGE = 500
#: The ``reason`` a session stopped this way is counted under (relay_agent_sessions_closed).
END_REASON = "endpoint_refused"

Endpoint = TcpEndpoint | HostEndpoint


def shown(kind: str, name: str | int) -> str:
    return f"tcp port {name}" if kind == "tcp" else str(name)


def reservation_refusal(
    kind: str, name: str | int, owner: Reservation | None, account_id: str, region: str
) -> RelayError | None:
    """Why a reservation refuses ``account_id`` the name or port on an edge of
    ``region``: reserved by another account (RLY_207), or pinned to another region
    (RLY_208); None when it does not (or nothing is reserved). One rule for a bind and for
    a live endpoint."""
    if owner is None:
        return None
    what = shown(kind, name)
    if owner.account_id != account_id:
        return NameReserved(f"{what} is reserved by another account")
    if owner.region is not None and owner.region != region:
        return RegionPinned(
            f"{what} is pinned to region {owner.region}; this edge is in region "
            f"{region}: connect its agent to a PoP of {owner.region}"
        )
    return None


def affected(
    live: Iterable[Endpoint], domains: Iterable[str], ports: Iterable[int]
) -> tuple[list[Endpoint], list[HostEndpoint]]:
    """Of ``live``, the endpoints a change of ``domains`` and ``ports`` may decide (the
    name or a wildcard covering it changed; the port), and the wildcard endpoints above a
    changed name (their pins may change)."""
    changed = set(domains)
    numbers = set(ports)
    above: set[str] = set()
    for name in changed:
        above.update(covering_names(name)[1:])
    hit: list[Endpoint] = []
    wild: list[HostEndpoint] = []
    for endpoint in live:
        if isinstance(endpoint, TcpEndpoint):
            if endpoint.port in numbers:
                hit.append(endpoint)
            continue
        if changed and any(c in changed for c in covering_names(endpoint.hostname)):
            hit.append(endpoint)
        if endpoint.hostname in above:
            wild.append(endpoint)
    return hit, wild


class LiveReservations:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        #: The newest audit event read (None: none yet; the first read checks everything).
        self.mark: int | None = None
        #: Bumped whenever a read found changes (see :meth:`bound`).
        self.epoch = 0
        #: Endpoints bound across a change, to check again (endpoint id -> endpoint).
        self._recheck: dict[str, Endpoint] = {}
        self._reads = Coalesced(self._read, self._finished)
        #: Whether the last read failed (said once per outage, as the credential watch).
        self._failing = False

    def changed(self, *, announce: bool = True) -> None:
        """A reservation may have been made or released: read what changed and check the
        live endpoints it decides, now. ``announce``: it was made through this edge's
        API, so the other nodes of its cluster (or the other workers of this edge) are
        told too; False when they told us, or for the watch's tick.

        One read at a time: a change signalled while one runs gets one more after it."""
        self._reads.ask()
        if announce:
            self._tell_others()

    def tick(self) -> None:
        """The credential watch's tick: :meth:`changed`, unless this edge (or worker)
        has no endpoints. Then there is nothing to check, and every worker and node of an
        idle edge asking the control plane every second would be load for nothing; the
        mark stays where it is, and the first tick with an endpoint live reads on from
        it, a page at a time. (A bind meanwhile asked the control plane itself.)"""
        if self.edge.endpoints or self._recheck:
            self.changed(announce=False)

    def bound(self, endpoint: Endpoint, epoch: int) -> None:
        """``endpoint`` was just bound (or taken over) by a bind that began at ``epoch``.
        If a change was read since, the bind may have asked about its name before that
        change was committed, and the check may have looked before it was registered:
        it is checked again."""
        if epoch != self.epoch:
            self._recheck[endpoint.endpoint_id] = endpoint
            self.changed(announce=False)

    def close(self) -> None:
        self._reads.cancel()

    def _tell_others(self) -> None:
        edge = self.edge
        if edge.cluster is not None:  # a worker of a clustered edge is a node too
            edge.cluster.announce({"event": "reservations"})
        elif edge.worker is not None:
            edge.worker.asks.tell("reservations")

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            if self._failing:
                self._failing = False
                log.warning("live endpoints are checked against reservations again")
            return
        if self._failing:
            return  # the next tick tries again; the mark has not moved past anything
        self._failing = True
        if isinstance(exc, RelayError):
            log.warning("live endpoints cannot be checked against reservations: %s", exc)
        else:
            log.error("checking live endpoints against reservations failed", exc_info=exc)

    async def _read(self) -> None:
        control = self.edge.control
        assert control is not None
        while True:
            changes = await control.reservation_changes(self.mark, PAGE)
            found = changes.everything or bool(changes.domains or changes.ports)
            if found:
                self.epoch += 1
                control.forget_reservations()  # a remote edge's cached answers are stale
            live = list(self.edge.endpoints.values())
            if changes.everything:
                hit, wild = live, [e for e in live if _is_wildcard(e)]
                forced = {e.endpoint_id for e in live}  # nothing to tell who changed what
            else:
                hit, wild = affected(live, changes.domains, changes.ports)
                by_operator, _ = affected(hit, changes.operator_domains, changes.operator_ports)
                forced = {e.endpoint_id for e in by_operator}
            pending, self._recheck = self._recheck, {}
            _add(hit, wild, pending.values())
            forced.update(pending)  # a bind across a change: the bind's own rule, in full
            try:
                await self._check(hit, wild, forced)
            except BaseException:
                self._recheck.update(pending)  # asked again on the next read
                raise
            self.mark = changes.mark  # only once checked: a failed check is read again
            if not changes.more:
                return

    async def _check(
        self, hit: Sequence[Endpoint], wild: Sequence[HostEndpoint], forced: Collection[str]
    ) -> None:
        """End each endpoint of ``hit`` its bind would now be refused, and replace the
        pins of each wildcard of ``wild``. Now reserved by another account (RLY_207), an
        endpoint ends only if its id is in ``forced`` (an operator's change decides it, or
        its bind crossed a change): a member's reservation of a name or port another
        account serves acts on that account's next bind. A pin (RLY_208: the endpoint's
        own account reserved it) always acts at once."""
        edge = self.edge
        control = edge.control
        assert control is not None
        if not hit and not wild:
            return
        region = edge.config.region
        names = sorted({e.hostname for e in hit if isinstance(e, HostEndpoint)})
        ports = sorted({e.port for e in hit if isinstance(e, TcpEndpoint)})
        owners: dict[str, Reservation] = {}
        held: dict[int, Reservation] = {}
        for i in range(0, max(len(names), len(ports)), MAX_ASKED):
            some, more = await control.reservation_owners(
                names[i : i + MAX_ASKED], ports[i : i + MAX_ASKED]
            )
            owners.update(some)
            held.update(more)
        pins = {w: await control.pins_under(w, region) for w in sorted({e.hostname for e in wild})}
        # Decided on what is live now: an endpoint removed (or replaced) while the
        # control plane answered is not this check's to end.
        for endpoint in hit:
            if edge.endpoints.get(endpoint.endpoint_id) is not endpoint:
                continue
            record = edge.tokens.get(endpoint.holder.token_id)
            if record is None:
                continue  # never verified here: nothing to compare the owner with
            name: str | int
            if isinstance(endpoint, TcpEndpoint):
                name, owner = endpoint.port, held.get(endpoint.port)
            else:
                name, owner = endpoint.hostname, owners.get(endpoint.hostname)
            error = reservation_refusal(endpoint.kind, name, owner, record.account_id, region)
            if isinstance(error, NameReserved) and endpoint.endpoint_id not in forced:
                log.info(
                    "%s is reserved by another account now (by a member's key): refused at "
                    "its next bind, served until then",
                    endpoint.url,
                )
            elif error is not None:
                self._end(endpoint, error)
        for wildcard in wild:
            if edge.endpoints.get(wildcard.endpoint_id) is not wildcard:
                continue
            fresh = pins[wildcard.hostname]
            if fresh != wildcard.pins:
                wildcard.pins = fresh  # read per visitor by HostRoutes.find: at once
                elsewhere = sorted(n for n, r in fresh.items() if r is not None)
                log.info(
                    "%s: names under it pinned to other regions now: %s",
                    wildcard.url,
                    ", ".join(elsewhere) if elsewhere else "none",
                )

    def _end(self, endpoint: Endpoint, error: RelayError) -> None:
        """``endpoint`` is no longer served here; its agent sessions are told."""
        edge = self.edge
        assert edge.control is not None
        sessions = list(dict.fromkeys(m.session for m in endpoint.members if m.session is not None))
        target = str(endpoint.port) if isinstance(endpoint, TcpEndpoint) else endpoint.hostname
        log.warning(
            "%s is no longer served here: %s (%d agent session(s) told)",
            endpoint.url,
            error.one_line(),
            len(sessions),
        )
        edge.control.audit(
            "edge",
            "endpoint.end",
            endpoint.holder.token_id,
            {
                "kind": endpoint.kind,
                "target": target,
                "endpoint": endpoint.endpoint_id,
                "sessions": [s.session_id for s in sessions],
                "code": error.code,
                "reason": str(error),
            },
        )
        edge.end_endpoint(endpoint)
        for session in sessions:
            _tell(session, endpoint, error)


def _tell(session: AgentSession, endpoint: Endpoint, error: RelayError) -> None:
    if session.link is None or session.link.closed or session.control is None:
        return
    message = f"{endpoint.url} is no longer served: {error}"
    if session.endpoints and session.protocol >= 2:
        # It serves other endpoints: they go on, and the agent drops this one.
        session.control.send(EndpointEnded(endpoint.endpoint_id, error.code, str(error)))
    elif session.endpoints:
        # An agent of protocol 1 has no word for it: it shows the notice.
        session.control.send(Notice("error", f"{error.code} {message}"))
    else:
        session.end_reason = END_REASON
        session.stop(error.code, message)


def _is_wildcard(endpoint: Endpoint) -> TypeGuard[HostEndpoint]:
    return isinstance(endpoint, HostEndpoint) and endpoint.hostname.startswith("*.")


def _add(hit: list[Endpoint], wild: list[HostEndpoint], more: Iterable[Endpoint]) -> None:
    """Add ``more`` to the endpoints to check, each once (by id: a HostEndpoint compares
    by value)."""
    seen = {e.endpoint_id for e in hit}
    seen_wild = {e.endpoint_id for e in wild}
    for endpoint in more:
        if endpoint.endpoint_id not in seen:
            seen.add(endpoint.endpoint_id)
            hit.append(endpoint)
        if _is_wildcard(endpoint) and endpoint.endpoint_id not in seen_wild:
            seen_wild.add(endpoint.endpoint_id)
            wild.append(endpoint)
