"""The supervisor's table: which worker holds which endpoint (sans-IO).

Every bind asks here first, so two workers never give one name or port to two owners —
the rules a single edge keeps (relay/edge/members.py), across workers:

* a key nobody holds goes to whoever asks;
* a key held under another token is refused, and so is a name whose other front (http
  or the TLS port) another token holds;
* the same link of the same agent asking again (its reconnect landed on another worker)
  takes its place over: the worker that had it drops that member (an orphan report it
  sends before it reads its ``drop`` does not bring the link back);
* another link of the same agent (``--links``), or any agent of the token when every
  holder bound it with ``pool``, joins the holders: visitors are shared, all with the
  endpoint's one Host rewrite and, on the TLS port, its one kind (https or tls): a
  member asking with another is refused, as on one edge (which worker took a visitor
  must not decide the Host its upstream sees, nor whether its TLS is terminated);
* any other agent of the token takes the key once no worker holds it live (the owner's
  agent was restarted and its endpoint is orphaned within its grace).

``live``, per worker, says whether its session(s) for the key are up: visitors are
handed only to workers that hold a key live, and of those to the ones whose members
take new visitors (a worker whose members all drain keeps the key, but gets none while
another takes them).

A dead worker's orphaned keys are forgotten when its grace runs out, but only those
orphaned by the run of the worker that died: a key its restarted worker bound again and
then orphaned afresh waits out a full grace of its own (the new run's orphan timer, or
the grace of that run's death), never the rest of the earlier death's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Member:
    """One session's hold on a key: which agent, which of its links, pooled or not."""

    worker: int
    agent: str
    link: int = 0
    pooled: bool = False


@dataclass
class Claim:
    token: str
    members: list[Member] = field(default_factory=list)
    #: worker -> whether its members of the key are live (False: orphaned, in grace).
    live: dict[int, bool] = field(default_factory=dict)
    #: worker -> the run of that worker (ClaimTable.worker_down) in which its members of
    #: the key were orphaned; exactly the workers ``live`` says False of.
    orphaned_in: dict[int, int] = field(default_factory=dict)
    #: Workers whose members of the key are live but all drain (a GoAway, a restart):
    #: they still hold it, but take no new visitor.
    resting: set[int] = field(default_factory=set)
    #: The Host its visitors' heads are rewritten to (``--host-header``; None: kept).
    rewrite: str | None = None
    #: A TLS-port name's kind, https or tls (None: a key of one kind, http or tcp).
    kind: str | None = None

    def live_workers(self) -> list[int]:
        """The workers visitors of the key go to: those whose members take them; while
        every live member drains, the draining ones (which answer as they can)."""
        live = sorted(w for w, up in self.live.items() if up)
        taking = [w for w in live if w not in self.resting]
        return taking or live

    def live_members(self) -> list[Member]:
        return [m for m in self.members if self.live.get(m.worker)]

    def hold_live(self, worker: int, taking: bool = True) -> None:
        self.live[worker] = True
        self.orphaned_in.pop(worker, None)
        if taking:
            self.resting.discard(worker)
        else:
            self.resting.add(worker)

    def orphan(self, worker: int, run: int) -> None:
        # Still orphaned keeps its first run: the grace counts from the first orphaning.
        if self.live.get(worker) is not False:
            self.orphaned_in[worker] = run
        self.live[worker] = False

    def let_go(self, worker: int) -> None:
        self.live.pop(worker, None)
        self.orphaned_in.pop(worker, None)
        self.resting.discard(worker)


@dataclass(frozen=True)
class Verdict:
    granted: bool
    why: str = ""
    #: Members that moved away or were taken over: their workers drop them.
    dropped: tuple[Member, ...] = ()


@dataclass(frozen=True)
class WorkerDown:
    """A worker's death as the table took it: hand it to ``forget_orphans`` once the
    reclaim grace has run out."""

    worker: int
    #: Which run of the worker died (0 for its first process, one more per death).
    run: int
    #: The keys whose live workers changed: every worker is told where they are now.
    changed: list[str]


class ClaimTable:
    def __init__(self) -> None:
        self._claims: dict[str, Claim] = {}
        #: worker -> its run now: how many times it died.
        self._runs: dict[int, int] = {}

    def claim(
        self,
        key: str,
        token: str,
        member: Member,
        rewrite: str | None = None,
        kind: str | None = None,
    ) -> Verdict:
        sibling = self._claims.get(_sibling(key))
        if sibling is not None and sibling.token != token:
            # A name has one owner across http and the TLS port (https, tls).
            return Verdict(False, f"{key.partition(':')[2]} is bound by another token")
        current = self._claims.get(key)
        if current is None:
            self._claims[key] = Claim(
                token, [member], {member.worker: True}, rewrite=rewrite, kind=kind
            )
            return Verdict(True)
        if current.token != token:
            return Verdict(False, f"{key} is bound by another token")
        same_link = [
            m for m in current.members if m.agent == member.agent and m.link == member.link
        ]
        others = [m for m in current.members if m not in same_link]
        live = [m for m in others if current.live.get(m.worker)]
        if not live:
            dropped = tuple(m for m in current.members if m.worker != member.worker)
            self._claims[key] = Claim(
                token, [member], {member.worker: True}, rewrite=rewrite, kind=kind
            )
            return Verdict(True, dropped=dropped)
        same_agent = all(m.agent == member.agent for m in live)
        pool = member.pooled and all(m.pooled for m in live)
        if not (same_agent or pool):
            return Verdict(False, f"{key} is bound by another agent session")
        if kind is not None and current.kind is not None and kind != current.kind:
            return Verdict(False, kind_refused(key.partition(":")[2], current.kind))
        if rewrite != current.rewrite:
            return Verdict(False, rewrite_refused(key.partition(":")[2], current.rewrite))
        current.members = [*others, member]
        current.hold_live(member.worker)
        for gone in same_link:  # a worker that kept no member of the key holds it no more
            if not any(m.worker == gone.worker for m in current.members):
                current.let_go(gone.worker)
        return Verdict(True, dropped=tuple(m for m in same_link if m.worker != member.worker))

    def apply_state(
        self,
        worker: int,
        key: str,
        token: str,
        members: list[Member],
        live: bool,
        taking: bool = True,
        rewrite: str | None = None,
        kind: str | None = None,
    ) -> str:
        """What ``worker`` holds of ``key`` now, all of it: its members (none: it holds
        the key no more) and whether one is live. Workers send it after every change, in
        order, so the last word is the truth whatever crossed it (a claim granted to a
        bind that then failed, an orphan that expired meanwhile). Returns ``changed``,
        ``same``, or ``conflict``: the key (or its name on the other front) is another
        token's now, and the worker must drop its copy."""
        current = self._claims.get(key)
        if not live and current is not None:
            # An orphan of a link another worker holds live is stale: this is the worker
            # the link left, reporting its dead session before it read its ``drop``. The
            # link is live where it went (a link is in one place), so the report does
            # not move it back.
            elsewhere = {
                (m.agent, m.link)
                for m in current.members
                if m.worker != worker and current.live.get(m.worker)
            }
            members = [m for m in members if (m.agent, m.link) not in elsewhere]
        if not members:
            if current is None or worker not in current.live:
                return "same"
            current.let_go(worker)
            current.members = [m for m in current.members if m.worker != worker]
            if not current.live:
                del self._claims[key]
            return "changed"
        sibling = self._claims.get(_sibling(key))
        if (current is not None and current.token != token) or (
            sibling is not None and sibling.token != token
        ):
            return "conflict"
        if current is None:
            current = self._claims[key] = Claim(token)
        unique = {(m.agent, m.link): m for m in members}  # one place per link
        mine = [Member(worker, m.agent, m.link, m.pooled) for m in unique.values()]
        before = (
            [m for m in current.members if m.worker == worker],
            current.live.get(worker),
            worker in current.resting,
        )
        # A link reported here is here: any copy of it another worker kept is stale.
        places = {(m.agent, m.link) for m in mine}
        current.members = [
            m for m in current.members if m.worker != worker and (m.agent, m.link) not in places
        ] + mine
        if live:
            current.hold_live(worker, taking)
            current.rewrite, current.kind = rewrite, kind
        else:
            current.orphan(worker, self._runs.get(worker, 0))
        after = (mine, live, worker in current.resting)
        return "same" if before == after else "changed"

    def release(self, worker: int, key: str) -> bool:
        """``worker`` no longer holds ``key``; True if it did."""
        return self.apply_state(worker, key, "", [], False) == "changed"

    def worker_down(self, worker: int) -> WorkerDown:
        """``worker`` died: its members stay, orphaned (not live), so that the names it
        held wait for their agents as on one edge. Its next process is its next run."""
        run = self._runs.get(worker, 0)
        self._runs[worker] = run + 1
        changed = []
        for key, claim in self._claims.items():
            if claim.live.get(worker):
                claim.orphan(worker, run)
                changed.append(key)
        return WorkerDown(worker, run, changed)

    def forget_orphans(self, down: WorkerDown) -> list[str]:
        """The grace of ``down`` ran out: the keys its worker still holds orphaned since
        that run or before go, and are returned. Those orphaned before the death go too,
        because the orphan timer the worker kept for them died with it. A key a later
        run bound again stays, live or orphaned afresh (then it waits out its own
        grace)."""
        gone = []
        for key, claim in self._claims.items():
            orphaned_in = claim.orphaned_in.get(down.worker)
            if orphaned_in is not None and orphaned_in <= down.run:
                gone.append(key)
        for key in gone:
            self.release(down.worker, key)
        return gone

    def live_workers(self, key: str) -> list[int]:
        current = self._claims.get(key)
        return current.live_workers() if current is not None else []

    def held_keys(self) -> list[str]:
        return list(self._claims)

    def holders(self, key: str) -> dict[int, bool]:
        current = self._claims.get(key)
        return dict(current.live) if current is not None else {}

    def members(self, key: str) -> list[Member]:
        current = self._claims.get(key)
        return list(current.members) if current is not None else []


def rewrite_refused(name: str, theirs: str | None) -> str:
    """Why a member is refused ``name`` when its live members rewrite the Host to
    ``theirs`` (None: they keep it) and it asks for another rewrite."""
    return (
        f"{name} is served by members with "
        + (f"--host-header {theirs}" if theirs else "no --host-header")
        + "; a member joins with the same Host rewrite as theirs"
    )


def kind_refused(name: str, theirs: str) -> str:
    """Why a member is refused ``name`` on the TLS port when its live members serve it as
    ``theirs`` (https: the edge terminates TLS; tls: passed through) and it asks for the
    other kind."""
    return f"{name} is served as a {theirs} endpoint; a member joins as the same kind"


def _sibling(key: str) -> str:
    """The same name on the other front: ``http:n`` ↔ ``sni:n`` (tcp ports have none)."""
    family, _, name = key.partition(":")
    return {"http": "sni:", "sni": "http:"}.get(family, "-:") + name
