"""What the REST API runs against: the store, the pepper its credentials are hashed with,
and — when it is served by an edge — a view of that edge's live sessions and endpoints.

The control plane imports no edge code (DESIGN.md, "Which way imports run"): the edge
hands the API a :class:`LiveView` and a :class:`FailureGuard`, two small interfaces
defined here, and the API knows nothing else about it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:  # the store's module loads SQLAlchemy; the interfaces need none of it
    from relay.control.store import Store
    from relay.control.store_thread import StoreCalls

T = TypeVar("T")
V = TypeVar("V")


@dataclass(frozen=True)
class SessionView:
    """One authenticated agent session on the edge."""

    id: str
    account_id: str
    token_id: str
    peer: str
    region: str | None
    endpoints: tuple[str, ...]  # their public URLs


@dataclass(frozen=True)
class EndpointView:
    """One endpoint bound on the edge."""

    id: str
    url: str
    kind: str
    session_id: str | None  # None while its agent is away and the name is held for it
    account_id: str | None


@dataclass(frozen=True)
class ReloadView:
    """What one node (or worker) did when asked to read its configuration file again:
    ``answered`` False when it did not answer in time (then nothing else is known)."""

    node: str
    answered: bool
    applied: tuple[str, ...] = ()  # the settings that changed
    kept: tuple[str, ...] = ()  # changed in the file, but need a restart
    refused: str | None = None  # why nothing changed (a bad file, a draining edge)


@dataclass(frozen=True)
class Listing(Generic[V]):
    """A list of the edge's live state, and whether it is the whole cluster's: while the
    other nodes cannot be asked (Redis does not answer), it holds this node's own only.
    A node that was asked but did not answer in time is left out of ``items`` without a
    word here, as before: it is gone or going (docs/scaling.md)."""

    items: list[V]
    #: Why the other nodes' part is missing ("the other nodes cannot be asked now: …");
    #: None when they were asked.
    others_unasked: str | None = None


@dataclass(frozen=True)
class CertificateView:
    """A certificate the edge serves for an https name."""

    name: str
    not_after: datetime | None  # None: not issued yet


class LiveView(Protocol):
    """The edge's live state, as the API may read and act on it (on a node of a cluster:
    every node's)."""

    async def sessions(self) -> Listing[SessionView]: ...

    async def endpoints(self) -> Listing[EndpointView]: ...

    def certificates(self) -> list[CertificateView]: ...

    async def stop_session(self, session_id: str, *, actor: str) -> bool:
        """End the session for good (the agent is told not to come back); False when
        there is no such live session."""
        ...

    async def restart_session(self, session_id: str, *, actor: str) -> bool:
        """Ask the agent to reconnect (it gets its endpoints back); False when there is
        no such live session."""
        ...

    async def reload(self, *, actor: str) -> list[ReloadView]:
        """This edge, and every other node of its cluster (or worker of its own), reads
        its configuration file again, as on SIGHUP: what each did (a node that could not
        be asked is listed as not answering)."""
        ...


class FailureGuard(Protocol):
    """Per-source refusal of callers that keep failing to authenticate (the edge shares
    one with its agent port, so a source guessing either credential is refused on both)."""

    def blocked_for(self, host: str) -> float:
        """Seconds ``host`` stays refused (0: admitted)."""
        ...

    def failed(self, host: str) -> None:
        """Count a failed authentication from ``host``."""
        ...


@dataclass
class ControlPlane:
    store: Store
    pepper: bytes = field(repr=False)  # a secret: never in a log line
    live: LiveView | None = None
    guard: FailureGuard | None = None
    #: Called after a credential ended through the API (a token revoked, an account
    #: suspended): an edge checks its live sessions at once, and a node of a cluster tells
    #: the other nodes to (relay/edge/cluster.py), instead of waiting for their next poll.
    credentials_ended: Callable[[], None] | None = None
    #: Called after a reservation was made or released through the API: an edge checks
    #: its live endpoints against it at once (relay/edge/live_reservations.py), and tells
    #: the other nodes of its cluster, or its other workers, to.
    reservations_changed: Callable[[], None] | None = None
    #: The base domains of the edges this plane serves: their names are bound first
    #: come, and only an operator may reserve a wildcard over all of one.
    shared_domains: tuple[str, ...] = ()
    #: How routes ask the store (every route does, through :meth:`ask`): off the event
    #: loop for PostgreSQL, so a database gone silent costs its callers a 503 after 5 s
    #: and not the loop, which serves the edge's visitors too.
    calls: StoreCalls = field(init=False)
    #: Threads those calls run on (`relay control` serves many edges: several).
    store_threads: InitVar[int] = 1

    def __post_init__(self, store_threads: int) -> None:
        from relay.control.store_thread import StoreCalls

        self.calls = StoreCalls(self.store, threads=store_threads)

    async def ask(self, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """``fn()``, which calls the store: ControlUnavailable (503, RLY_504) when the
        store does not answer."""
        return await self.calls(fn, timeout=timeout)

    def announce_credentials_ended(self) -> None:
        if self.credentials_ended is not None:
            self.credentials_ended()

    def announce_reservations_changed(self) -> None:
        if self.reservations_changed is not None:
            self.reservations_changed()
