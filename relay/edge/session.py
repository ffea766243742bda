"""One agent's session at the edge: handshake, authentication, binds, teardown.

This is the Link handler for an agent connection. The first stream the agent opens is
the control stream; every other stream is opened by the edge, one per visitor.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any

import relay_native

from relay import __version__
from relay.control.store import TokenRecord
from relay.edge.auth_guard import source_of
from relay.edge.control_pace import BURST, ControlPace
from relay.errors import AuthError as AuthFailure
from relay.errors import BindError as BindFailure
from relay.errors import (
    CertificateError,
    ControlUnavailable,
    ProtocolViolation,
    RelayError,
    TooManySessions,
)
from relay.logs import cut
from relay.mux import ControlChannel, MuxStream
from relay.protocol import (
    PROTOCOL_VERSIONS,
    Auth,
    AuthError,
    AuthOk,
    Bind,
    BindError,
    Bound,
    Message,
    Restart,
    Stop,
    Unbind,
    protocol_of,
)

if TYPE_CHECKING:
    from relay.edge.server import Edge

log = logging.getLogger("relay.edge.session")

#: How long a restarted session's streams may take to finish before its link is closed.
RESTART_GRACE = 30.0
#: Between a restarted session's last visitor routed to it and its GoAway. A visitor
#: routed just before has its Pump, but the Pump opens its stream only in connection_made,
#: which the event loop runs a turn later; after our GoAway that open fails and the
#: visitor is reset (the links test of the full suite caught it, about 1 run in 10).
SETTLE = 0.1
#: Restarts under way (a task must be referenced until it is done).
_restarting: set[asyncio.Task[None]] = set()

#: The ``reason`` label of relay_auth_failures_total, by the failure's code.
AUTH_FAILURE_REASONS = {
    "RLY_101": "invalid_token",
    "RLY_102": "revoked",
    "RLY_103": "expired",
    "RLY_104": "account_suspended",
    "RLY_302": "version",
}

#: Failures that count against the source (relay.edge.auth_guard): a token that does not
#: verify. A protocol version mismatch is an honest old agent, not a guess.
GUESSING_CODES = frozenset(("RLY_101", "RLY_102", "RLY_103"))
#: Links one agent may hold at once (``--links``): cloudflared holds 4.
MAX_AGENT_LINKS = 16
#: The longest agent id (the agent's own is ``a_`` and 16 hex digits). Every member of
#: an endpoint is reported with its agent id in one bounded message between an edge's
#: workers (relay/edge/worker.py derives how many members fit from this).
MAX_AGENT_ID = 64
#: Visible ASCII only: an id is logged, shown on /status and sent as JSON, where a control
#: character, a space or a non-ASCII character (escaped to 6 or 12 bytes) would mislead
#: or grow it.
AGENT_ID_RE = re.compile(rf"[!-~]{{1,{MAX_AGENT_ID}}}")


class AgentSession:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.session_id = "s_" + secrets.token_hex(8)
        self.link: Any = None
        self.control: ControlChannel | None = None
        self.token_id: str | None = None
        #: Its token's account, and whether it is counted among the account's sessions
        #: (relay/edge/account_limits.py): from its authentication to its end.
        self.account_id: str | None = None
        self.counted = False
        #: Whether its account is a member's, whose limits and pace apply (an operator's
        #: are counted only).
        self.limited = False
        self.agent_id: str | None = None
        #: Which of its agent's links this session is (``--links``; relay/edge/members.py).
        self.link_index = 0
        #: The control-protocol version its agent speaks (relay/protocol.py): what the
        #: edge may send it.
        self.protocol = 1
        #: Told to go away for good (:meth:`stop`): nothing it still sends is acted on.
        self.stopped = False
        #: How fast its binds and unbinds are acted on: every endpoint it may hold, bound
        #: twice (as it remembered it, then anew), never waits.
        self.pace = ControlPace(burst=max(BURST, 2 * edge.config.max_endpoints_per_session))
        #: This link was told, when it authenticated, that a lower link of its agent is
        #: on this worker too (relay/agent/placement.py).
        self.beside_lower = False
        self.peer = ""
        #: What failed authentications count against (relay.edge.auth_guard.source_of).
        self.source = "-"
        self.authenticated = False
        self._draining = False
        self.endpoints: dict[str, Any] = {}
        #: Why the session ended, for metrics: set by whoever ended it; "closed" when the
        #: agent just went away.
        self.end_reason: str | None = None
        self.rtt_us = 0
        self._task: asyncio.Task[None] | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None

    @property
    def accepting_visitors(self) -> bool:
        return self.authenticated and not self.draining and not self.link.closed

    @property
    def draining(self) -> bool:
        """No new visitor is routed here (a GoAway, a stop, a restart, the edge's drain);
        live streams finish."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        started = value and not self._draining
        self._draining = value
        if started and self.endpoints:
            # The other workers and nodes route visitors by what this one reports: from
            # now on they must send none here, not until the session ends (up to 30 s).
            self.edge.session_draining(self)

    # --- Link handler -----------------------------------------------------------------

    def link_made(self, link: Any) -> None:
        self.link = link
        peer = link.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.source = source_of(peer)
        # The direct TLS listener refuses a blocked source before its handshake; uvloop's
        # TLS hands over its links only after it, so this checks again.
        if not self.edge.admits_agent_from(peer) or not self.edge.session_started(self):
            link.abort()  # full or draining: link_lost follows, and releases nothing
            return
        self._handshake_timer = link.loop.call_later(
            self.edge.config.handshake_timeout, self._handshake_expired
        )

    def stream_opened(self, stream_id: int) -> None:
        if self.control is None:
            self.link.session.accept_stream(stream_id)
            channel = self.link.open_buffer_channel(stream_id)
            self.control = ControlChannel(MuxStream(self.link, channel))
            self._task = asyncio.get_running_loop().create_task(self._serve_control())
            return
        # Unreachable: the edge's session allows its agent one stream (max_peer_streams),
        # and a second open ends the link with a protocol error before it gets here.
        self.link.session.reset_stream(stream_id)

    def goaway(self, code: int) -> None:
        log.info("session %s: agent sent GoAway(%d)", self.session_id, code)
        self.draining = True

    def pong(self, rtt_us: int) -> None:
        self.rtt_us = rtt_us

    def link_lost(self, exc: BaseException | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if isinstance(exc, relay_native.ProtocolError):
            # A hostile or broken agent: operators want to see these.
            log.warning("session %s (%s): protocol violation: %s", self.session_id, self.peer, exc)
            self.end_reason = self.end_reason or "protocol_error"
        elif isinstance(exc, relay_native.KeepaliveTimeout):
            log.info("session %s (%s) ended: %s", self.session_id, self.peer, exc)
            self.end_reason = self.end_reason or "keepalive_timeout"
        elif exc is not None:
            log.info("session %s (%s) ended: %s", self.session_id, self.peer, exc)
            self.end_reason = self.end_reason or "link_error"
        self.edge.session_ended(self)

    # --- control stream -----------------------------------------------------------------

    def _handshake_expired(self) -> None:
        if not self.authenticated:
            log.warning("agent %s did not authenticate in time; closing", self.peer)
            self.edge.metrics.auth_failures.labels("timeout").inc()
            self.link.abort()

    async def _serve_control(self) -> None:
        assert self.control is not None
        try:
            first = await self.control.recv()
            if not isinstance(first, Auth):
                raise ProtocolViolation(f"expected auth, got {first.TYPE}")
            if not await self._authenticate(first):
                return
            account = self.account_id
            assert account is not None  # set by a successful authentication
            paces = self.edge.account_paces
            while True:
                message = await self.control.recv()
                # Charged to the session's pace and its account's: the later one holds.
                wait = self.pace.delay()
                if self.limited:
                    wait = max(wait, paces.delay(account))
                if wait > 0.0:
                    # No window credit is returned meanwhile: the agent's writes wait for
                    # it, and what it sent already waits unparsed (relay/edge/control_pace.py).
                    self.edge.metrics.control_paced.inc()
                    self.control.stream.hold()
                    await asyncio.sleep(wait)
                await self._handle(message)
        except EOFError:
            self.link.close()
        except RelayError as exc:
            log.warning("session %s (%s): %s", self.session_id, self.peer, exc)
            if not self.authenticated:
                self.edge.metrics.auth_failures.labels("protocol").inc()
                self.edge.auth_failed(self)
            self.end_reason = "protocol_error"
            self.control.send(AuthError(exc.code, str(exc)))
            self.link.session.go_away(1)
            self.link.close()
        except Exception:  # a bug: never leave a half-dead session behind
            log.exception("session %s: internal error", self.session_id)
            self.link.session.go_away(2)
            self.link.close()

    def _place(self) -> tuple[int, int, int]:
        """(worker, workers, beside) for this session's auth_ok. Links 1.. of an agent
        are told which worker they reached and which lower links of the agent it holds
        (they move off a lower link's worker: relay/agent/placement.py); link 0, and
        any link of an edge of one process, are told nothing."""
        worker = self.edge.worker
        if worker is None or self.link_index == 0:
            return (0, 1, 0)
        beside = 0
        for other in self.edge.sessions:
            if (
                other.authenticated
                and other is not self
                and other.link_index < self.link_index
                and other.token_id == self.token_id
                and other.agent_id == self.agent_id
            ):
                beside |= 1 << other.link_index
        return (worker.place.index, worker.place.count, beside)

    def _make_room(self) -> None:
        """A link arrived here and no lower link of its agent is here: a higher link of
        the agent on this worker moves to another (a graceful restart: its streams
        finish), so the agent's links take a worker each again after this one came back
        (relay/agent/placement.py). A higher link told it was beside a lower one when it
        came stays: it either moved at once or stayed knowing there was no free worker."""
        worker = self.edge.worker
        if worker is None or worker.place.count < 2:
            return
        same = [
            other
            for other in self.edge.sessions
            if other is not self
            and other.authenticated
            and not other.draining
            and other.token_id == self.token_id
            and other.agent_id == self.agent_id
        ]
        if any(other.link_index < self.link_index for other in same):
            return  # this link is the one beside a lower link: it moves, or knowingly stays
        for other in same:
            if other.link_index > self.link_index and not other.beside_lower:
                log.info(
                    "session %s: link %d of its agent came to this worker; link %d moves",
                    other.session_id,
                    self.link_index,
                    other.link_index,
                )
                other.restart(f"link {self.link_index} of this agent came to this worker")

    def _refuse(self, exc: RelayError) -> None:
        """Answer a failed authentication with its code and end the link."""
        assert self.control is not None
        self.control.send(AuthError(exc.code, str(exc)))
        self.link.session.go_away(0)
        self.link.close()

    def _spoken(self, said: int) -> int:
        """The protocol this session speaks: what its ``auth`` says, but never newer than
        the version the link's ALPN settled on (a client that offered only ``relay/1``
        and says 2 is sent nothing protocol 1 does not know). Without ALPN, ``said``."""
        ssl_object = self.link.transport.get_extra_info("ssl_object")
        agreed = protocol_of(ssl_object.selected_alpn_protocol()) if ssl_object else None
        return said if agreed is None else min(said, agreed)

    async def _authenticate(self, auth: Auth) -> bool:
        assert self.control is not None
        if not 0 <= auth.link < MAX_AGENT_LINKS:
            raise ProtocolViolation(f"auth: link {auth.link} is not 0..{MAX_AGENT_LINKS - 1}")
        if AGENT_ID_RE.fullmatch(auth.agent_id) is None:
            # Refused before the token is verified: a malformed message costs no lookup.
            raise ProtocolViolation(
                f"auth: agent_id must be 1 to {MAX_AGENT_ID} visible ASCII characters "
                f"(no spaces or control characters), not {auth.agent_id[:MAX_AGENT_ID]!r}"
            )
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        try:
            if auth.protocol not in PROTOCOL_VERSIONS:
                speaks = " and ".join(str(v) for v in sorted(PROTOCOL_VERSIONS))
                raise AuthFailure(
                    f"agent speaks protocol {auth.protocol}, edge {speaks}", code="RLY_302"
                )
            record = await self.edge.verify_token(auth.token, peer=self.peer)
        except ControlUnavailable as exc:
            # Not the agent's fault, and not a guess: it is told to come back later.
            log.warning("agent %s: cannot verify its token: %s", self.peer, exc.one_line())
            self.edge.metrics.auth_failures.labels("control_unavailable").inc()
            self._refuse(exc)
            return False
        except AuthFailure as exc:
            log.warning("agent %s: authentication failed: %s", self.peer, exc.one_line())
            self.edge.metrics.auth_failures.labels(
                AUTH_FAILURE_REASONS.get(exc.code, "other")
            ).inc()
            if exc.code in GUESSING_CODES:
                self.edge.auth_failed(self)
            self._refuse(exc)
            return False
        self.protocol = self._spoken(auth.protocol)
        if not self._count_in(record, auth):
            return False
        self.token_id = record.id
        self.agent_id = auth.agent_id
        self.link_index = auth.link
        self.authenticated = True
        self.edge.metrics.sessions_opened.inc()
        region = self.edge.config.region
        place = self._place()
        self.beside_lower = place[2] != 0
        # Only an agent of protocol 2 knows the field (older ones refuse unknown fields).
        pop = self.edge.pop_name if self.protocol >= 2 else ""
        self.control.send(AuthOk(self.session_id, __version__, region, record.id, *place, pop=pop))
        self._make_room()
        log.info(
            "session %s: agent %s (token %s, %s) authenticated",
            self.session_id,
            self.peer,
            record.id,
            cut(auth.version, MAX_AGENT_ID),  # the agent's own text: bounded
        )
        return True

    def _count_in(self, record: TokenRecord, auth: Auth) -> bool:
        """Count this session among its account's (relay/edge/account_limits.py); False,
        the link refused, when a member account holds its limit. The same link of the same
        agent reconnecting (its old session not yet seen to end: a path that broke
        silently) is not refused: its old session is ended for it."""
        limits = self.edge.account_limits
        limited = record.account_role == "member"
        try:
            limits.session_starts(record.account_id, limited=limited)
        except TooManySessions as exc:
            old = self._same_link(record.id, auth.agent_id, auth.link)
            if old is None:
                self._refuse_for_account(record, exc)
                return False
            log.info(
                "session %s: link %d of agent %s came back while its account holds its "
                "limit; its old session %s ends for it",
                self.session_id,
                auth.link,
                cut(auth.agent_id, MAX_AGENT_ID),
                old.session_id,
            )
            limits.session_starts(record.account_id, room=True)  # the old one's, going now
            old.end_reason = "superseded"
            old.link.abort()
        self.account_id = record.account_id
        self.counted = True
        self.limited = limited
        return True

    def _refuse_for_account(self, record: TokenRecord, exc: TooManySessions) -> None:
        """A good token, refused for its account's sake: not a guess, not a failure of
        its own. The agent tries again later, or another PoP."""
        self.edge.metrics.links_refused.labels("account_full").inc()
        more = self.edge.account_limits.refusal_to_say(record.account_id)
        if more is not None:
            log.warning(
                "agent %s (token %s): %s%s",
                self.peer,
                record.id,
                exc.one_line(),
                f" ({more} more of its sessions refused since the last said)" if more else "",
            )
        if self.protocol >= 3:
            self._refuse(exc)
            return
        # An agent before protocol 3 would exit on a code it does not know: it is told
        # nothing, and reconnects with backoff as when the edge is full.
        self.link.session.go_away(0)
        self.link.close()

    def _same_link(self, token_id: str, agent_id: str, link: int) -> AgentSession | None:
        """The authenticated session of this very link of this agent, if it has one."""
        for other in self.edge.sessions:
            if (
                other is not self
                and other.authenticated
                and other.token_id == token_id
                and other.agent_id == agent_id
                and other.link_index == link
                and not other.link.closed
            ):
                return other
        return None

    async def _handle(self, message: Message) -> None:
        assert self.control is not None
        if self.stopped:
            return  # its messages already read are not acted on
        if isinstance(message, Bind):
            if not await self.edge.credential_still_valid(self):
                return  # the session was stopped with the credential's code
            try:
                endpoint = await self.edge.bind(self, message)
            except (BindFailure, CertificateError) as exc:
                self.control.send(BindError(message.request_id, exc.code, str(exc)))
                self.edge.bind_refused(self, message, exc)
                return
            if self.stopped:
                return  # stopped while it bound: its end releases the endpoint
            self.control.send(
                Bound(message.request_id, endpoint.endpoint_id, endpoint.url, endpoint.port)
            )
            self.edge.endpoint_bound(endpoint)
        elif isinstance(message, Unbind):
            self.edge.unbind(self, message.endpoint_id)
        else:
            raise ProtocolViolation(f"unexpected {message.TYPE} from agent")

    # --- edge-initiated -------------------------------------------------------------------

    def stop(self, code: str, message: str) -> None:
        """Tell the agent to go away for good (revoked token, suspension)."""
        self.stopped = True
        if self.link.closed:
            return
        self.draining = True  # no new visitors meanwhile
        if self.control is not None:
            self.control.send(Stop(code, message))
        self.link.session.go_away(0)
        self.link.close()

    def drain(self, why: str = "edge is shutting down") -> None:
        """No new streams; ask the agent to reconnect (elsewhere, or later). Set
        ``draining`` a loop turn or more before: visitors routed here just before open
        their streams then, and a stream opened after our GoAway fails."""
        self.draining = True
        if self.link.closed:
            return
        if self.control is not None and self.authenticated:
            self.control.send(Restart(why))
        self.link.session.go_away(0)
        self.link.schedule_flush()

    def restart(self, why: str) -> None:
        """Ask the agent to reconnect without cutting a stream: no visitor is routed
        here from now on, live streams finish (for up to :data:`RESTART_GRACE`), then
        the link closes and the agent comes back."""
        self.draining = True
        task = asyncio.get_running_loop().create_task(self._restart(why))
        _restarting.add(task)
        task.add_done_callback(_restarting.discard)

    async def _restart(self, why: str) -> None:
        await asyncio.sleep(SETTLE)
        self.drain(why)
        deadline = asyncio.get_running_loop().time() + RESTART_GRACE
        while asyncio.get_running_loop().time() < deadline and self.live_streams():
            await asyncio.sleep(0.1)
        if not self.link.closed:
            self.link.close()

    def live_streams(self) -> int:
        return 0 if self.link is None or self.link.closed else int(self.link.pump_count())
