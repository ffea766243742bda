"""The agent session: connect with backoff, authenticate, bind, serve visitor streams."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import relay_native

from relay import __version__
from relay.admin import AdminServer
from relay.agent.backoff import Backoff
from relay.agent.binds_later import BindsLater
from relay.agent.metrics import AgentMetrics
from relay.agent.placement import MAX_PLACEMENT_TRIES, Place, crowded, placement_delay
from relay.agent.pops import FAILED_FOR, WRONG_REGION_FOR, Pop, PopChooser
from relay.agent.proxy_protocol import encode_v1, encode_v2, parse_visitor_addr
from relay.error_pages import render
from relay.errors import (
    AuthError,
    BindError,
    ConfigError,
    ConnectError,
    NameReserved,
    NotAnEdge,
    ProtocolViolation,
    RegionPinned,
    RelayError,
    TlsError,
    TooManyEndpoints,
    error_from_code,
)
from relay.mux import ControlChannel, MuxConfig, MuxStream, StreamReset
from relay.mux import Pump as _Pump
from relay.protocol import (
    ALPN_PROTOCOLS,
    Auth,
    AuthOk,
    Bind,
    Bound,
    CertStatus,
    EndpointEnded,
    Message,
    Notice,
    Restart,
    Stop,
    StreamHeader,
    StreamProtocol,
    protocol_of,
)
from relay.protocol import AuthError as AuthErrorMessage
from relay.protocol import BindError as BindErrorMessage
from relay.tls import check_pin, client_context
from relay.tlslink import connect_link

log = logging.getLogger("relay.agent")
T = TypeVar("T")

#: How long a visitor stream may take to deliver its StreamHeader.
HEADER_TIMEOUT = 10.0
#: How long dialling the upstream may take before the visitor is reset.
UPSTREAM_CONNECT_TIMEOUT = 10.0
#: How long the edge may take to answer Auth or Bind.
REPLY_TIMEOUT = 15.0
#: With several PoPs, the most the TCP connect and TLS handshake with one may take. A live
#: edge answers in milliseconds, and another PoP is waiting: a hung edge process (still
#: completing TCP handshakes from its listen backlog) or a load balancer with no backend
#: costs this long, not ``connect_timeout``, before the next PoP is tried.
SEVERAL_CONNECT_TIMEOUT = 3.0
#: With several PoPs, the most the edge may take to answer Auth. Longer than the TLS
#: bound: verifying a token may wait on the control plane (a PostgreSQL store call is
#: given up on after 5 s, answered RLY_504).
SEVERAL_AUTH_TIMEOUT = 5.0
#: With several PoPs, the link's keepalive: a ping every 5 s, dead when one is unanswered
#: and the edge sent nothing for 5 s, so a PoP that goes silent (frozen, host gone: no
#: RST) is noticed within 10 s instead of 25 s (the mux's 15 s + 10 s), and another PoP
#: is waiting. It costs an edge with 10,000 such agents 2,000 pings (and pongs) a second
#: instead of 667.
SEVERAL_KEEPALIVE_INTERVAL_MS = 5_000
SEVERAL_KEEPALIVE_TIMEOUT_MS = 5_000
#: How often a draining agent looks whether its last stream ended.
DRAIN_POLL = 0.05
#: The most a stopping agent waits for the edge to have read its GoAway (the answer to
#: the ping behind it: one round trip), accepting the visitors routed here meanwhile.
CROSSING_WAIT = 3.0
#: The most a link moving to another PoP waits for its live streams (as the edge's
#: graceful restart of a session does): longer ones are cut.
LEAVE_GRACE = 30.0


@dataclass(frozen=True)
class EndpointSpec:
    kind: str  # tcp | http | https | tls
    upstream_host: str
    upstream_port: int
    remote_port: int = 0
    name: str = ""
    domain: str = ""
    subdomain: str = ""
    #: Host header sent upstream: "" keeps the visitor's, "rewrite" uses the upstream's.
    host_header: str = ""
    #: "tcp" dials plain TCP; "https" speaks TLS to the upstream.
    upstream_scheme: str = "tcp"
    upstream_tls_verify: bool = True
    proxy_protocol: str = ""  # "", "v1", "v2"
    #: Share the endpoint with other agents of the token that bind it pooled too.
    pool: bool = False

    @property
    def upstream(self) -> str:
        host = f"[{self.upstream_host}]" if ":" in self.upstream_host else self.upstream_host
        scheme = "" if self.upstream_scheme == "tcp" else f"{self.upstream_scheme}://"
        return f"{scheme}{host}:{self.upstream_port}"

    @property
    def host_header_value(self) -> str:
        if self.host_header == "rewrite":
            default = 443 if self.upstream_scheme == "https" else 80
            host = f"[{self.upstream_host}]" if ":" in self.upstream_host else self.upstream_host
            return host if self.upstream_port == default else f"{host}:{self.upstream_port}"
        return self.host_header


@dataclass
class BoundEndpoint:
    spec: EndpointSpec
    endpoint_id: str
    url: str
    remote_port: int
    # What every visitor connection of this endpoint dials with, decided once per bind.
    upstream_host: str = field(init=False, repr=False, compare=False)
    upstream_port: int = field(init=False, repr=False, compare=False)
    upstream_ssl: ssl.SSLContext | None = field(init=False, repr=False, compare=False)
    server_hostname: str | None = field(init=False, repr=False, compare=False)
    proxy_protocol: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = self.spec
        self.upstream_host = spec.upstream_host
        self.upstream_port = spec.upstream_port
        tls = spec.upstream_scheme == "https"
        self.upstream_ssl = upstream_tls_context(spec.upstream_tls_verify) if tls else None
        self.server_hostname = spec.upstream_host if tls else None
        self.proxy_protocol = bool(spec.proxy_protocol)


@dataclass(frozen=True)
class AgentOptions:
    edge_host: str
    edge_port: int
    token: str
    endpoints: tuple[EndpointSpec, ...]
    ca_file: Path | None = None
    pin: str | None = None
    server_name: str | None = None
    mux: MuxConfig = field(default_factory=MuxConfig)
    connect_timeout: float = 10.0
    #: (host, port) of the agent's admin listener (/metrics, /healthz, /readyz, /status);
    #: None for none (the default: an agent is often one of many on a laptop).
    admin_listen: tuple[str, int] | None = None
    agent_id: str = field(default_factory=lambda: "a_" + secrets.token_hex(8))
    #: Which of the agent's links this is (relay/agent/links.py runs ``--links K``).
    link: int = 0
    #: Every PoP the agent may use (``--edge a:7000,b:7000``); empty: just
    #: ``edge_host:edge_port``. Either may be a name with several addresses.
    edges: tuple[tuple[str, int], ...] = ()
    #: Only PoPs of this region serve the agent ("": any).
    region: str = ""
    #: On a stop (SIGTERM, Ctrl-C), how long visitors' live streams may take to finish;
    #: new visitors go elsewhere from the first moment (another link or pool member).
    grace_period: float = 30.0


class SessionEnded(Exception):
    """The link is gone; reconnect."""


class Crowded(SessionEnded):
    """This link reached a worker a lower link of the agent holds: it connects again."""

    def __init__(self, message: str, tries: int) -> None:
        super().__init__(message)
        self.tries = tries


class WrongRegion(SessionEnded):
    """The PoP is in another region than ``--region``: try the next one at once."""


class PopSilent(SessionEnded):
    """The edge stopped answering the link's keepalive pings: frozen, or its host gone."""


class FatalAgentError(RelayError):
    """Reconnecting would not help (bad token, forbidden bind, Stop from the edge)."""


class EndpointRefused(FatalAgentError, BindError):
    """A Stop whose code refuses a bind (RLY_207, RLY_208): a reservation made since the
    bind refuses its endpoint now. The agent ends as a refused bind ends it (exit 4),
    and does not come back to be refused again."""


class EndpointNotReady(RelayError):
    """A visitor stream names an endpoint this session has not bound (or no longer has):
    not the upstream's fault, so not a 502 RLY_613."""


def bind_error(message: BindErrorMessage) -> RelayError:
    """A refused bind as the error its code names, always a BindError (exit 4) or an
    AuthError (exit 3): an RLY_806 (a wildcard the edge's issuer cannot certify) refuses
    the bind as surely as RLY_205."""
    error = error_from_code(message.code, message.message)
    if isinstance(error, AuthError | BindError):
        return error
    return BindError(message.message, code=message.code)


def stop_error(message: Stop) -> RelayError:
    """What a Stop from the edge ends the agent with: the error its code names when that
    is an authentication error (a revoked or expired token: `relay tcp` exits 3 with the
    code), an EndpointRefused when it is RLY_207 or RLY_208 (its only endpoint refused
    now by a reservation: exit 4), else a FatalAgentError carrying the code (any other
    bind code included). Either way the agent does not retry."""
    error = error_from_code(message.code, message.message)
    if isinstance(error, AuthError):
        return error
    if isinstance(error, NameReserved | RegionPinned):
        return EndpointRefused(message.message, code=message.code)
    return FatalAgentError(message.message, code=message.code)


class LinkLeader(Protocol):
    """What another link of an agent follows: the names and ports link 0 was given (link
    0's Agent itself, or relay/agent/link_process.py's view of it in another process)."""

    remembered_ports: dict[EndpointSpec, int]
    remembered_names: dict[EndpointSpec, str]
    urls: dict[EndpointSpec, str]
    refused: set[EndpointSpec]


class Agent:
    def __init__(
        self,
        options: AgentOptions,
        *,
        status: Callable[[str], None] | None = None,
        leader: LinkLeader | None = None,
    ) -> None:
        """``leader``: this is another link of that agent (``--links``): it binds exactly
        the names and ports the leader was given, and never asks for new ones."""
        self.options = options
        self.status = status or (lambda line: log.info("%s", line))
        self.backoff = Backoff()
        self.leader = leader
        self.bound: dict[str, BoundEndpoint] = {}  # endpoint_id -> endpoint
        self.remembered_ports: dict[EndpointSpec, int] = {}
        # Names the edge assigned at random (http/https), asked for again on reconnect.
        self.remembered_names: dict[EndpointSpec, str] = {}
        self.urls: dict[EndpointSpec, str] = {}
        #: Endpoints a reservation made since took away (RLY_207, RLY_208: refused on a
        #: re-bind): no longer asked for, while the others serve on.
        self.refused: set[EndpointSpec] = set()
        if leader is not None:  # the leader's, shared: what it was given, this link asks
            self.remembered_ports = leader.remembered_ports
            self.remembered_names = leader.remembered_names
            self.urls = leader.urls
            self.refused = leader.refused
        #: Set once every endpoint is bound (the other links start then).
        self.all_bound = asyncio.Event()
        #: Endpoints left out of this session for the account's limit, asked for again.
        self._later: BindsLater[EndpointSpec] = BindsLater()
        self._later_timer: asyncio.TimerHandle | None = None
        self.pops = PopChooser(
            options.edges or ((options.edge_host, options.edge_port),), options.region
        )
        self.pop: Pop | None = None  # the PoP of the current attempt
        #: Where this link's session is, once established (relay/agent/placement.py).
        self.place: Place | None = None
        #: Where the agent's lower links are (``--links``; link 0 has none).
        self.lower_places: Callable[[], list[Place]] = lambda: []
        self._placement_tries = 0
        self.link: Any = None
        self.sessions_started = 0
        self._stopping = False
        #: The drain a stop started (streams still live), until the link closes.
        self._draining: asyncio.Task[None] | None = None
        #: A move to another PoP under way (:meth:`leave_pop`).
        self._leaving: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._context: ssl.SSLContext | None = None
        # Whether the current attempt got as far as an authenticated session.
        self._established = False
        # When the current session started serving (its binds done; loop time), if it did.
        self._serving_since: float | None = None
        self._session_done: asyncio.Future[BaseException | None] | None = None
        self._control: ControlChannel | None = None
        # Visitor streams opened in the current receive batch, not yet looked at.
        self._opened: list[Any] = []
        # While binds are in flight: visitor streams for an endpoint whose Bound reply
        # has not been read yet (the edge routes visitors the moment it binds, and a
        # stream's open can overtake the reply on its way up to the control loop).
        self._binding = False
        self._awaiting_bind: list[Any] = []
        self._header_deadlines = _Deadlines()
        self._dial_deadlines = _Deadlines()
        self.metrics: AgentMetrics | None = AgentMetrics(self) if options.admin_listen else None
        self.admin: AdminServer | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped; raise what cannot heal by reconnecting (an AuthError, a
        TlsError or NotAnEdge: the edge's identity or address is wrong, a BindError before
        any session worked, a Stop from the edge). Only network faults and edge restarts
        are retried, with backoff; ``stop()`` ends every state within a moment."""
        self._context = client_context(ca_file=self.options.ca_file, pin=self.options.pin)
        self._stopped = asyncio.Event()
        if self.metrics is not None and self.options.admin_listen is not None:
            self.admin = AdminServer(self.metrics, self.metrics.readiness, self.metrics.status)
            await self.admin.start(*self.options.admin_listen)
        try:
            await self._run()
        finally:
            if self.admin is not None:
                self.admin.close()

    async def _run(self) -> None:
        assert self._stopped is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._established = False
            self._serving_since = None
            found = await self._unless_stopped(self.pops.ranked())
            if found is None:
                break
            ranked = found.result()
            if self.pops.all_away(ranked):
                raise ConfigError(
                    f"no PoP of region {self.options.region} among "
                    f"{', '.join(str(p) for p in ranked)}"
                )
            self.pop = self.pops.choose(ranked)
            session = await self._unless_stopped(self._run_session())
            if session is None:
                break  # stopped while connecting or handshaking
            try:
                session.result()
            except (TlsError, NotAnEdge) as exc:
                # With several PoPs one may be misconfigured: the others are tried, and
                # only when every PoP says so does the agent give up.
                if not self.pops.several or self.pop is None:
                    raise
                self.pops.set_aside(self.pop, WRONG_REGION_FOR)
                found = await self._unless_stopped(self.pops.ranked())
                if found is None:
                    break
                if self.pops.all_away(found.result()):
                    raise
                self.status(f"{self.pop}: {exc}; trying another PoP")
                continue
            except (AuthError, FatalAgentError):
                raise
            except WrongRegion as exc:
                self.status(str(exc))
                continue  # the next PoP at once: this one is not the agent's region
            except Crowded as exc:
                # Soon, not at once: the free worker may be one being started again.
                self.status(str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), placement_delay(exc.tries))
                continue
            except BindError as exc:
                if not self.sessions_started_ok:
                    raise
                lost = f"re-binding failed: {exc}"
            except (OSError, ConnectError, SessionEnded, ProtocolViolation) as exc:
                if self._established:
                    lost = f"session lost: {exc}"
                else:  # refused or unreachable: with its code (RLY_502, RLY_504, ...)
                    lost = exc.one_line() if isinstance(exc, RelayError) else str(exc)
                if (
                    self.pops.several
                    and self.pop is not None
                    and (not self._established or isinstance(exc, PopSilent))
                ):
                    # The probe cannot tell a hung PoP from a live one (its kernel still
                    # completes TCP handshakes): without this the next attempt picks it
                    # again, for ever. The next attempt takes another PoP.
                    self.pops.failed(self.pop)
                    lost += f" ({self.pop} set aside for {FAILED_FOR:g}s)"
            else:
                lost = "session ended"
            if self._stopping:
                break
            if self._serving_since is not None:
                # Only a session that lasted resets the backoff: an edge that takes the
                # agent and drops it at once is not redialled every 0.25 s for ever.
                self.backoff.session_ended(loop.time() - self._serving_since)
            delay = self.backoff.next_delay()
            self.status(f"{lost}; reconnecting in {delay:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)

    async def _unless_stopped(self, work: Awaitable[T]) -> asyncio.Future[T] | None:
        """``work`` run to its end (its future, done: take its result or error), or None
        when the agent was stopped first, and ``work`` cancelled: a connect or handshake
        under way, or a resolver that does not answer (up to 5 s a name), must not hold
        a stop."""
        assert self._stopped is not None
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if task.done():
            return task
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None

    @property
    def sessions_started_ok(self) -> bool:
        return self.sessions_started > 0

    @property
    def connected(self) -> bool:
        """An authenticated session with the edge is up."""
        return self._established and self.link is not None and not self.link.closed

    def live_streams(self) -> int:
        """Visitors' streams open on the link now (the control stream not counted)."""
        link = self.link
        if link is None or link.closed or not self._established:
            return 0
        return max(0, int(link.session.stream_count) - 1)

    def stop(self, *, now: bool = False) -> None:
        """Stop: at once when ``now`` (or ``grace_period`` is 0); else drain: GoAway (the
        edge sends no new visitor here: another link or pool member gets them), and the
        link closes once the edge has read the GoAway and every stream ended, or
        ``grace_period`` passed. A stop while draining changes nothing; ``stop(now=True)``
        ends the drain."""
        if self._draining is not None and not now:
            return
        link = self.link
        if (
            now
            or self._stopping
            or self.options.grace_period <= 0
            or link is None
            or link.closed
            or not self._established
        ):
            self._stop_now()
            return
        self._stopping = True
        live = self.live_streams()
        # Even an idle agent waits the one round trip until the edge has read the GoAway:
        # a visitor it routed here before that is accepted and served, not refused.
        link.session.go_away_draining(0)
        link.schedule_flush()
        self._draining = asyncio.get_running_loop().create_task(self._drain())
        # Said last: the drain is under way whatever the status callback does (a link
        # process's agent may be gone, and its pipe with it).
        if live:
            self.status(
                f"draining {live} live stream(s) for up to {self.options.grace_period:g}s; "
                "no new visitors (stop again to quit now)"
            )

    def leave_pop(self, why: str) -> bool:
        """Move to another PoP without cutting a stream: GoAway (the edge sends new
        visitors to the agent's other links), live streams finish (for up to
        :data:`LEAVE_GRACE`), then the link closes and :meth:`run` connects again, to a
        PoP no other link is on where there is one (``PopChooser.busy``). Whether a move
        began (not while stopping, moving, or not serving)."""
        link = self.link
        if (
            self._stopping
            or self._leaving is not None
            or link is None
            or link.closed
            or not self._established
        ):
            return False
        self.status(f"moving to another PoP: {why}")
        link.session.go_away_draining(0)
        link.schedule_flush()
        self._leaving = asyncio.get_running_loop().create_task(self._leave(link))
        self._leaving.add_done_callback(self._left)
        return True

    async def _leave(self, link: Any) -> None:
        await self._streams_end(LEAVE_GRACE)
        if not link.closed:
            link.close()  # run's session ends here: it connects again

    def _left(self, task: asyncio.Task[None]) -> None:
        self._leaving = None

    def _goaway_crossing(self) -> bool:
        link = self.link
        return link is not None and not link.closed and bool(link.session.goaway_crossing)

    async def _streams_end(self, grace: float) -> None:
        """After a GoAway: until the edge has read it (at most CROSSING_WAIT: visitors it
        routed here meanwhile are served) and every stream ended, or ``grace`` passed.
        A link that closes has no stream left, so this ends with it too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        crossing_until = min(deadline, loop.time() + CROSSING_WAIT)
        while loop.time() < deadline and (
            self.live_streams() or (self._goaway_crossing() and loop.time() < crossing_until)
        ):
            await asyncio.sleep(DRAIN_POLL)

    async def _drain(self) -> None:
        await self._streams_end(self.options.grace_period)
        left = self.live_streams()
        if left:
            self.status(f"grace period over: closing {left} stream(s)")
        self._stop_now()

    def _stop_now(self) -> None:
        self._stopping = True
        if self._draining is not None and self._draining is not asyncio.current_task():
            self._draining.cancel()
        if self._stopped is not None:
            self._stopped.set()
        if self.link is not None and not self.link.closed:
            self.link.session.go_away(0)
            self.link.close()
        if self._session_done is not None and not self._session_done.done():
            self._session_done.set_result(None)

    async def _run_session(self) -> None:
        loop = asyncio.get_running_loop()
        options = self.options
        assert self._context is not None
        self._session_done = loop.create_future()
        several = self.pops.several
        link = self._mux(several).new_link(self, loop, client=True)
        pop = self.pop or Pop(options.edge_host, options.edge_port, options.edge_host)
        server_name = options.server_name or pop.name
        where = str(pop)
        if several:
            handshake = overall = SEVERAL_CONNECT_TIMEOUT
        else:
            handshake, overall = options.connect_timeout, options.connect_timeout + 1
        try:
            await asyncio.wait_for(
                connect_link(
                    loop,
                    lambda: link,
                    pop.host,
                    pop.port,
                    ssl_context=self._context,
                    server_hostname=server_name,
                    handshake_timeout=handshake,
                ),
                overall,
            )
        except TimeoutError:
            raise ConnectError(
                f"timed out connecting to the edge at {where} (after {overall:g}s)"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(
                f"the edge's certificate is not trusted ({exc.verify_message}): pass "
                "--ca-file DATA_DIR/ca/ca.pem or --pin sha256:… as printed by `relay edge`"
            ) from None
        except ssl.SSLError as exc:
            if exc.reason in NOT_TLS_REASONS:
                raise NotAnEdge(
                    f"{where} does not speak TLS ({exc.reason}): is it the edge's agent port "
                    "(relay edge --listen), not its HTTP port?"
                ) from None
            if exc.reason is not None and ("ALERT" in exc.reason or "UNRECOGNIZED" in exc.reason):
                # The server said no with an alert: an edge's agent port never does that to
                # an agent it could serve later (an edge restarting just closes).
                raise NotAnEdge(
                    f"the TLS server at {where} refused the handshake ({exc.reason}): is it "
                    "the edge's agent port (relay edge --listen), not its HTTPS port?"
                ) from None
            # Anything else in a handshake (the edge closing mid-way while it restarts)
            # may heal.
            raise ConnectError(f"TLS with the edge at {where} failed: {exc}") from None
        except OSError as exc:
            raise ConnectError(f"cannot reach the edge at {where}: {exc.strerror or exc}") from None
        try:
            alpn = link.transport.get_extra_info("ssl_object").selected_alpn_protocol()
            protocol = protocol_of(alpn)
            if protocol is None:
                raise NotAnEdge(
                    f"the TLS server at {where} is not a relay edge's agent port "
                    f"(it agreed to none of {', '.join(ALPN_PROTOCOLS)}): is --edge the "
                    "address `relay edge` prints for agents?"
                )
            await self._handshake(link, protocol)
            self.sessions_started += 1
            if self.metrics is not None:
                self.metrics.sessions_started.inc()
            # The backoff is reset when the session ends, if it lasted (Backoff.session_ended).
            self._serving_since = loop.time()
            await self._serve_control()
        finally:
            if not link.closed:
                link.close()
            self.link = None

    def _mux(self, several: bool) -> MuxConfig:
        """The link's mux settings: with several PoPs a shorter keepalive (never a longer
        one, nor one switched off), since a silent PoP is only noticed by it and another
        PoP could serve meanwhile."""
        mux = self.options.mux
        if not several or mux.keepalive_interval_ms == 0:
            return mux
        return dataclasses.replace(
            mux,
            keepalive_interval_ms=min(mux.keepalive_interval_ms, SEVERAL_KEEPALIVE_INTERVAL_MS),
            keepalive_timeout_ms=min(mux.keepalive_timeout_ms, SEVERAL_KEEPALIVE_TIMEOUT_MS),
        )

    async def _handshake(self, link: Any, protocol: int) -> None:
        if self.options.pin is not None:
            check_pin(link.transport.get_extra_info("ssl_object"), self.options.pin)
        stream_id = link.session.open_stream()
        channel = link.open_buffer_channel(stream_id)
        control = ControlChannel(MuxStream(link, channel))
        self._control = control
        control.send(
            Auth(
                token=self.options.token,
                agent_id=self.options.agent_id,
                version=f"relay-agent/{__version__}",
                hostname=socket.gethostname(),
                link=self.options.link,
                protocol=protocol,
            )
        )
        reply = await self._reply(
            control, SEVERAL_AUTH_TIMEOUT if self.pops.several else REPLY_TIMEOUT
        )
        if isinstance(reply, AuthErrorMessage):
            raise error_from_code(reply.code, reply.message)
        if not isinstance(reply, AuthOk):
            raise ProtocolViolation(f"expected auth_ok, got {reply.TYPE}")
        if self.options.region and reply.region != self.options.region and self.pop:
            self.pops.wrong_region(self.pop)
            raise WrongRegion(
                f"{self.pop} is a PoP of region {reply.region}, not {self.options.region}; "
                "trying another"
            )
        self._place(reply)
        self._established = True
        if self.pop is not None:
            self.pops.served(self.pop)
        where = f", {self.pop}" if len(self.pops.last_rtts) > 1 and self.pop else ""
        self.status(f"session {reply.session_id} established (edge {reply.edge_version}{where})")
        self.bound.clear()
        self._binding = True
        try:
            await self._bind_all(control)
        finally:
            self._binding = False
            parked, self._awaiting_bind = self._awaiting_bind, []
            for channel in parked:
                self._start_visitor(channel, None)

    def _place(self, reply: AuthOk) -> None:
        """Raise Crowded when this link should be on another worker of its PoP (and
        tries remain); else keep where it is."""
        pop = self.pop or Pop(self.options.edge_host, self.options.edge_port, "")
        here = Place(pop, reply.worker, reply.pop)
        self.pops.learn(pop, reply.pop)
        lower_on_pop = sum(here.same_pop(p) for p in self.lower_places())
        if crowded(self.options.link, reply.workers, reply.beside, lower_on_pop):
            if self._placement_tries < MAX_PLACEMENT_TRIES:
                self._placement_tries += 1
                raise Crowded(
                    f"worker {reply.worker} of {reply.workers} holds a lower link too; "
                    f"connecting again for another ({self._placement_tries}"
                    f"/{MAX_PLACEMENT_TRIES})",
                    self._placement_tries,
                )
            self.status(
                f"staying on worker {reply.worker} beside a lower link after "
                f"{MAX_PLACEMENT_TRIES} new connections"
            )
        self._placement_tries = 0
        self.place = here

    async def _bind_all(self, control: ControlChannel) -> None:
        self._later.clear()
        if self._later_timer is not None:  # a last session's, which ended before it fired
            self._later_timer.cancel()
            self._later_timer = None
        for request_id, spec in enumerate(self.options.endpoints, start=1):
            if spec in self.refused:
                continue
            answer = await self._bind(control, request_id, spec, remembered=True)
            if isinstance(answer, BindErrorMessage) and self.leader is not None:
                if self._taken_away(spec, bind_error(answer)):
                    continue
                # Another link may join only what the leader holds; if that moved, try
                # again later (the leader asks anew, this link then follows it).
                raise SessionEnded(
                    f"could not join {self.urls.get(spec, spec.upstream)}: {answer.message}"
                )
            if (
                isinstance(answer, BindErrorMessage)
                and self._remembered(spec)
                and answer.code != TooManyEndpoints.code  # a new one would be refused too
            ):
                # What the edge gave us last time is someone else's now (an edge restart
                # forgets who held what): take a new one rather than fail for good.
                self.status(f"{self.urls[spec]} is taken now ({answer.message}); asking anew")
                answer = await self._bind(control, request_id, spec, remembered=False)
            if isinstance(answer, BindErrorMessage):
                error = bind_error(answer)
                if self._taken_away(spec, error) or self._left_out(spec, error):
                    continue
                raise error
            self._serving(spec, answer)
        if self._later.waiting:
            if not self.bound:
                raise SessionEnded(
                    "no endpoint is served now: the edge holds as many endpoints of this "
                    "token's account as it allows (RLY_206)"
                )
            self._ask_later_in(self._later.next_delay())
        if self.sessions_started_ok:
            self.status(f"reconnected; {len(self.bound)} endpoint(s) serving again")
        self.all_bound.set()

    def _serving(self, spec: EndpointSpec, answer: Bound) -> None:
        """``spec`` is bound: serve it, remember what the edge gave, say where."""
        self.bound[answer.endpoint_id] = BoundEndpoint(
            spec, answer.endpoint_id, answer.url, answer.remote_port
        )
        previous = self.urls.get(spec)
        self.urls[spec] = answer.url
        self.remembered_ports[spec] = answer.remote_port
        if spec.kind != "tcp" and not (spec.domain or spec.subdomain):
            # The random name the edge assigned: asked for again after a reconnect,
            # so the URL survives an edge restart.
            self.remembered_names[spec] = (urlsplit(answer.url).hostname or "").split(".")[0]
        if previous is None:
            self.status(f"Forwarding  {answer.url} -> {spec.upstream}")
        elif previous != answer.url:
            self.status(f"Forwarding  {answer.url} -> {spec.upstream} (was {previous})")

    def _taken_away(self, spec: EndpointSpec, error: RelayError) -> bool:
        """Whether a refused re-bind of ``spec`` only ends that endpoint: a reservation or
        region pin made since it was served took it away (an operator's decision, which
        retrying cannot change). The other endpoints serve on, and it is not asked for
        again: retried, it would end their session at every reconnect. When it was the
        last one, the agent ends as a Stop with that code ends it (exit 4). A bind refused
        before any session served, or for another reason, fails as before.

        Another link (``--links``) that cannot join such an endpoint skips it too, rather
        than reconnect until link 0 learns (link 0 may never re-bind: its session was
        only told by a notice). Until link 0's next change of what it holds, which puts
        it back in the list, this link's next session skips it as well."""
        if not isinstance(error, NameReserved | RegionPinned):
            return False
        if self.leader is None and not self.sessions_started_ok:
            return False
        self.refused.add(spec)
        left = [s for s in self.options.endpoints if s not in self.refused]
        url = self.urls.get(spec, spec.upstream)
        if not left and self.leader is None:
            raise EndpointRefused(f"{url} is no longer served: {error}", code=error.code)
        self.status(
            f"{url} is no longer served ({error.one_line()}); not asked for again, "
            f"{len(left)} endpoint(s) serve on"
        )
        return True

    def _left_out(self, spec: EndpointSpec, error: RelayError) -> bool:
        """Whether a refused re-bind of ``spec`` only leaves that endpoint out of this
        session for now: the edge holds as many endpoints of the token's account as it
        allows (RLY_206; others of the account took the places while this agent was
        away). The other endpoints serve on, and it is asked for again while the session
        lasts (relay/agent/binds_later.py); with none served the session ends and the
        agent reconnects with backoff. A bind refused before any session served fails as
        before, and another link (``--links``) follows its leader as before."""
        if not isinstance(error, TooManyEndpoints) or self.leader is not None:
            return False
        if not self.sessions_started_ok:
            return False
        self._later.leave_out(spec)
        url = self.urls.get(spec, spec.upstream)
        self.status(f"{url} is not served now ({error.one_line()}); asked for again later")
        return True

    def _ask_later_in(self, delay: float) -> None:
        if self._later_timer is not None:
            self._later_timer.cancel()
        self._later_timer = asyncio.get_running_loop().call_later(delay, self._ask_later)

    def _ask_later(self) -> None:
        """Ask again for the endpoints left out; the control loop takes the answers."""
        self._later_timer = None
        control = self._control
        if control is None or self.link is None or self.link.closed:
            return
        for request_id, spec in self._later.due():
            control.send(self._bind_message(request_id, spec, remembered=True))

    def _answered_later(self, spec: EndpointSpec, answer: Bound | BindErrorMessage) -> None:
        if isinstance(answer, Bound):
            self._serving(spec, answer)
            return
        error = bind_error(answer)
        if isinstance(error, TooManyEndpoints):
            self._later.leave_out(spec)  # still no room: said once, asked again later
            if self._later_timer is None:
                self._ask_later_in(self._later.next_delay())
        elif not self._taken_away(spec, error):
            url = self.urls.get(spec, spec.upstream)
            self.status(f"{url} is not served ({error.one_line()})")

    def _ended(self, message: EndpointEnded) -> None:
        """The edge no longer serves one of this session's endpoints (protocol 2): taken
        away as a refused re-bind would have been (:meth:`_taken_away`), at once rather
        than at the next reconnect; for any other reason, only said."""
        bound = self.bound.pop(message.endpoint_id, None)
        if bound is None:
            return  # not (or no longer) this session's
        error = error_from_code(message.code, message.message)
        if not self._taken_away(bound.spec, error):
            self.status(f"{bound.url} is no longer served ({error.one_line()})")

    def _remembered(self, spec: EndpointSpec) -> bool:
        """Whether the last bind of ``spec`` asked for something only remembered (a port
        or name the edge assigned before), not something the user asked for."""
        return (spec in self.remembered_ports and not spec.remote_port and spec.kind == "tcp") or (
            spec in self.remembered_names
        )

    async def _bind(
        self, control: ControlChannel, request_id: int, spec: EndpointSpec, *, remembered: bool
    ) -> Bound | BindErrorMessage:
        control.send(self._bind_message(request_id, spec, remembered=remembered))
        answer = await self._reply(control)
        if not isinstance(answer, Bound | BindErrorMessage):
            raise ProtocolViolation(f"expected bound, got {answer.TYPE}")
        return answer

    def _bind_message(self, request_id: int, spec: EndpointSpec, *, remembered: bool) -> Bind:
        """The Bind for ``spec``: with ``remembered``, the port or name the edge gave it
        before (unless the user named one)."""
        port = self.remembered_ports.get(spec, spec.remote_port) if remembered else spec.remote_port
        subdomain = spec.subdomain
        if remembered and not subdomain and not spec.domain:
            subdomain = self.remembered_names.get(spec, "")
        return Bind(
            request_id,
            spec.kind,
            spec.name,
            port,
            spec.upstream,
            domain=spec.domain,
            subdomain=subdomain,
            host_header=spec.host_header_value,
            pool=spec.pool,
        )

    async def _reply(self, control: ControlChannel, timeout: float = REPLY_TIMEOUT) -> Message:
        try:
            return await asyncio.wait_for(self._recv_or_end(control), timeout)
        except TimeoutError:
            raise SessionEnded("the edge did not answer in time") from None

    async def _recv_or_end(self, control: ControlChannel) -> Message:
        """The next message that answers or commands something. News (a Notice, a
        certificate's state) may arrive between any two, even while a Bind waits for its
        reply: it is shown here and not returned."""
        while True:
            try:
                message = await control.recv()
            except (EOFError, StreamReset):
                exc = self.link.close_exc if self.link is not None else None
                raise SessionEnded(f"the edge closed the session{_reason(exc)}") from None
            if isinstance(message, Stop):
                # Whatever we were waiting for: the edge wants us gone for good (a revoked
                # or expired token, a suspension), with the code that says why.
                raise stop_error(message)
            if isinstance(message, Notice):
                self.status(f"notice from the edge: {message.message}")
            elif isinstance(message, EndpointEnded):
                self._ended(message)
            elif isinstance(message, CertStatus):
                self.status(describe_certificate(message))
            else:
                return message

    async def _serve_control(self) -> None:
        control = self._control
        assert control is not None and self._session_done is not None
        receiver = asyncio.ensure_future(self._control_loop(control))
        try:
            waiting: set[asyncio.Future[Any]] = {receiver, self._session_done}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiver.cancel()
            if self._later_timer is not None:
                self._later_timer.cancel()
                self._later_timer = None
        failure = receiver.exception() if receiver.done() and not receiver.cancelled() else None
        # Whichever noticed first (the control stream's reader or link_lost), a link
        # that died of an unanswered ping says so: with several PoPs that one is set aside.
        lost = self._session_done.result() if self._session_done.done() else None
        if isinstance(lost, relay_native.KeepaliveTimeout) and not self._stopping:
            raise PopSilent(f"the edge stopped answering keepalive pings ({lost})")
        if failure is not None:
            raise failure
        if not self._stopping:
            raise SessionEnded("the link closed")

    async def _control_loop(self, control: ControlChannel) -> None:
        while True:
            message = await self._recv_or_end(control)
            if isinstance(message, Restart):
                # The edge is draining: its GoAway stops new streams, live ones finish, and
                # the edge closes the link when they are done; then we reconnect.
                self.status(f"the edge is draining ({message.message}); will reconnect")
            elif isinstance(message, Bound | BindErrorMessage) and (
                spec := self._later.answered(message.request_id)
            ):
                self._answered_later(spec, message)
            else:
                log.warning("ignoring unexpected %s from the edge", message.TYPE)

    # --- Link handler -----------------------------------------------------------------

    def link_made(self, link: Any) -> None:
        self.link = link

    def stream_opened(self, stream_id: int) -> None:
        link = self.link
        link.session.accept_stream(stream_id)
        opened = self._opened
        opened.append(link.open_buffer_channel(stream_id))
        if len(opened) == 1:
            # The StreamHeader nearly always comes in the same receive batch as the open,
            # but its DATA event is delivered after this call: look once the batch is
            # done. One callback per batch, no task per stream.
            link.loop.call_soon(self._start_opened)

    def goaway(self, code: int) -> None:
        log.info("edge sent GoAway(%d)", code)

    def pong(self, rtt_us: int) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        done = self._session_done
        if done is not None and not done.done():
            done.set_result(exc)

    # --- visitors ---------------------------------------------------------------------

    def _start_opened(self) -> None:
        opened, self._opened = self._opened, []
        for channel in opened:
            self._start_visitor(channel, None)

    def _start_visitor(self, channel: Any, wait: _HeaderWait | None) -> None:
        """Parse the visitor's StreamHeader from what its stream has buffered and start
        dialling the upstream, synchronously; if the header has not all arrived, wait for
        more bytes (up to HEADER_TIMEOUT from the first look)."""
        header: StreamHeader | None = None
        try:
            if channel.reset:
                raise StreamReset("visitor went away before its header arrived")
            parsed = StreamHeader.parse(channel.peek())
            if parsed is None:
                if channel.fin:
                    raise ProtocolViolation("stream ended inside its header")
                if wait is None:
                    wait = _HeaderWait(self, channel)
                    self._header_deadlines.add(wait, channel.link.loop, HEADER_TIMEOUT)
                channel.wait().add_done_callback(wait.ready)
                return
            if wait is not None:
                wait.done = True
                self._header_deadlines.discard(wait)
                wait = None
            header, used = parsed
            endpoint = self.bound.get(header.endpoint_id)
            if endpoint is None:
                if self._binding:
                    self._awaiting_bind.append(channel)  # looked at again once bound
                    return
                raise EndpointNotReady(f"stream for unknown endpoint {header.endpoint_id}")
            channel.take(used)
            channel.hold()  # credit waits until the upstream is there to take the bytes
            preamble = (
                proxy_preamble(endpoint.spec, header.visitor_addr)
                if endpoint.proxy_protocol
                else b""
            )
            dial = _Dial(self, channel.link, channel.stream_id, header, endpoint, preamble)
        except Exception as exc:
            if wait is not None:
                wait.done = True
                self._header_deadlines.discard(wait)
            self._visitor_failed(channel.link, channel.stream_id, header, exc)
            return
        dial.step(None)

    def _visitor_failed(
        self,
        link: Any,
        stream_id: int,
        header: StreamHeader | None,
        exc: BaseException,
        upstream: str = "",
    ) -> None:
        """Serving a visitor stream failed: an HTTP visitor gets an error page (its request
        id is in the log line too, so a user's screenshot finds the line), anyone else a
        reset stream."""
        http = header is not None and header.protocol in _HTTP_PROTOCOLS
        request_id = secrets.token_hex(8) if http else ""
        visitor = header.visitor_addr if header is not None and header.visitor_addr else "?"
        if self.metrics is not None and header is not None:
            self.metrics.stream(self._url_of(header), visitor, _outcome(exc, http))
        where = f"upstream {upstream}" if upstream else f"stream {stream_id}"
        tag = f" (request id {request_id})" if request_id else ""
        if isinstance(exc, _VISITOR_ERRORS):
            log.warning("visitor %s: %s: %s%s", visitor, where, exc, tag)
        else:
            log.error("visitor %s: %s: unexpected error%s", visitor, where, tag, exc_info=exc)
        if http:
            assert header is not None
            self._answer_with_error(link, stream_id, header, exc, request_id)
        elif not link.closed:
            link.channels.pop(stream_id, None)
            link.session.reset_stream(stream_id)
            link.schedule_flush()

    def _url_of(self, header: StreamHeader) -> str:
        bound = self.bound.get(header.endpoint_id)
        return bound.url if bound is not None else header.endpoint_id

    def stream_served(self, header: StreamHeader) -> None:
        """A visitor stream reached its upstream (for `relay status`)."""
        if self.metrics is not None:
            self.metrics.stream(self._url_of(header), header.visitor_addr or "?", "ok")

    def _answer_with_error(
        self, link: Any, stream_id: int, header: StreamHeader, exc: BaseException, request_id: str
    ) -> None:
        """The visitor speaks HTTP: tell them what went wrong, with a code, then end."""
        if link.closed or stream_id not in link.channels:
            return
        if isinstance(exc, TimeoutError):
            status, code, text = 504, "RLY_614", "the upstream did not answer in time"
        elif isinstance(exc, EndpointNotReady):
            status, code, text = 503, "RLY_611", "the agent is not serving this endpoint yet"
        else:
            status, code, text = 502, "RLY_613", "the agent could not reach the upstream"
        page = render(status, code, text, accept=header.extra.get("accept"), request_id=request_id)
        link.channels.pop(stream_id, None)
        link.send(stream_id, page)
        link.session.close_stream(stream_id)
        link.schedule_flush()


def _outcome(exc: BaseException, http: bool) -> str:
    """What the visitor was told: the error page's code, or a reset."""
    if not http:
        return "reset"
    if isinstance(exc, TimeoutError):
        return "RLY_614"
    if isinstance(exc, EndpointNotReady):
        return "RLY_611"
    return "RLY_613"


#: What a visitor stream may fail with in the ordinary course (logged without a traceback).
_VISITOR_ERRORS = (OSError, RelayError, StreamReset, ssl.SSLError)
_HTTP_PROTOCOLS = (StreamProtocol.HTTP, StreamProtocol.HTTPS)


class _Deadlines:
    """Timeouts of many visitor streams on one timer, instead of a timer (or an
    ``asyncio.timeout``) per stream.

    Every item gets the same timeout, so deadlines arrive in ascending order: the dict
    (insertion-ordered) is a queue and the timer only ever waits for its head. Items that
    finish in time are discarded; those still here at their deadline get ``expire()``."""

    __slots__ = ("_entries", "_loop", "_timer")

    def __init__(self) -> None:
        self._entries: dict[_HeaderWait | _Dial, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self, item: _HeaderWait | _Dial, loop: asyncio.AbstractEventLoop, timeout: float
    ) -> None:
        deadline = loop.time() + timeout
        self._entries[item] = deadline
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_at(deadline, self._sweep)

    def discard(self, item: _HeaderWait | _Dial) -> None:
        self._entries.pop(item, None)

    def _sweep(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time() + 0.001  # the loop's clock and timers have millisecond steps
        entries = self._entries
        expired = []
        for item, deadline in entries.items():
            if deadline > now:
                break
            expired.append(item)
        for item in expired:
            del entries[item]
        if entries:
            self._timer = loop.call_at(next(iter(entries.values())), self._sweep)
        for item in expired:
            try:
                item.expire()
            except Exception:
                log.exception("expiring %r failed", item)


class _HeaderWait:
    """A visitor stream whose StreamHeader has not all arrived yet (rare: the edge sends
    it with the stream's first frame). Looked at again whenever bytes arrive."""

    __slots__ = ("agent", "channel", "done")

    def __init__(self, agent: Agent, channel: Any) -> None:
        self.agent = agent
        self.channel = channel
        self.done = False

    def ready(self, _future: object) -> None:
        if not self.done:
            self.agent._start_visitor(self.channel, self)

    def expire(self) -> None:
        if not self.done:
            self.done = True
            channel = self.channel
            exc = TimeoutError(f"no stream header within {HEADER_TIMEOUT:g}s")
            self.agent._visitor_failed(channel.link, channel.stream_id, None, exc)


class _Dial:
    """Dials the upstream of one visitor stream under UPSTREAM_CONNECT_TIMEOUT.

    Drives ``loop.create_connection`` by hand, a step per future it waits on: no Task
    per visitor connection. The ``Pump`` it makes adopts the stream when the upstream
    connects (writing the preamble and what arrived meanwhile, then returning credit);
    on failure the visitor gets an error page (HTTP) or a reset."""

    __slots__ = ("agent", "coro", "done", "future", "header", "link", "stream_id", "upstream")

    def __init__(
        self,
        agent: Agent,
        link: Any,
        stream_id: int,
        header: StreamHeader,
        endpoint: BoundEndpoint,
        preamble: bytes,
    ) -> None:
        self.agent = agent
        self.link = link
        self.stream_id = stream_id
        self.header = header
        self.upstream = endpoint.spec.upstream
        self.future: asyncio.Future[Any] | None = None
        self.done = False
        loop = link.loop
        kind = header.protocol - StreamProtocol.TCP  # the traffic counters' index
        self.coro = loop.create_connection(
            lambda: _Pump(link, stream_id, None, preamble, kind),
            endpoint.upstream_host,
            endpoint.upstream_port,
            ssl=endpoint.upstream_ssl,
            server_hostname=endpoint.server_hostname,
        )
        agent._dial_deadlines.add(self, loop, UPSTREAM_CONNECT_TIMEOUT)

    def step(self, _future: object) -> None:
        if self.done:
            return
        try:
            future = self.coro.send(None)
        except StopIteration:
            self._finish(None)
            return
        except (Exception, asyncio.CancelledError) as exc:
            self._finish(exc)
            return
        self.future = future
        if future is None:  # a bare yield: go on next iteration
            self.link.loop.call_soon(self.step, None)
        else:
            future.add_done_callback(self.step)

    def _finish(self, exc: BaseException | None) -> None:
        self.done = True
        self.future = None
        self.agent._dial_deadlines.discard(self)
        if exc is not None:
            self.agent._visitor_failed(self.link, self.stream_id, self.header, exc, self.upstream)
        else:
            self.agent.stream_served(self.header)

    def expire(self) -> None:
        if self.done:
            return
        self.done = True
        future, self.future = self.future, None
        exc = TimeoutError(f"the upstream did not answer within {UPSTREAM_CONNECT_TIMEOUT:g}s")
        try:
            if future is not None:
                future.remove_done_callback(self.step)
                future.cancel()
            self.coro.close()  # create_connection closes its half-made transport
        finally:
            self.agent._visitor_failed(self.link, self.stream_id, self.header, exc, self.upstream)


def describe_certificate(status: CertStatus) -> str:
    """One line for the user about an https endpoint's certificate."""
    name = status.hostname
    if status.state == "pending":
        return f"Certificate for {name}: being issued ({status.issuer})"
    if status.state == "issued":
        until = f", valid until {status.expires}" if status.expires else ""
        line = f"Certificate for {name}: issued ({status.issuer}{until})"
        if status.issuer == "local":
            line += (
                "; it comes from the edge's own CA: visitors must trust that CA "
                "(DATA_DIR/ca/ca.pem on the edge) or they will see a certificate warning"
            )
        return line
    reason = f"error {status.code}: {status.message}" if status.code else status.message
    if status.expires:  # a renewal failed; the current certificate still serves
        return f"Certificate for {name}: renewal failed ({reason}); valid until {status.expires}"
    return f"Certificate for {name}: not issued: {reason}"


#: OpenSSL's reasons when what answered is not TLS (an HTTP port, say).
NOT_TLS_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNKNOWN_PROTOCOL",
        "HTTP_REQUEST",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LAYER_FAILURE",
    }
)


def proxy_preamble(spec: EndpointSpec, visitor_addr: str) -> bytes:
    """The PROXY protocol header for the upstream, if the endpoint asks for one.
    The destination is the upstream address: the edge's public address is not known
    to the agent per connection."""
    if not spec.proxy_protocol or not visitor_addr:
        return b""
    src = parse_visitor_addr(visitor_addr)
    dst = (spec.upstream_host, spec.upstream_port)
    if spec.proxy_protocol == "v1":
        return encode_v1(src, dst)
    return encode_v2(src, dst)


@functools.cache
def upstream_tls_context(verify: bool) -> ssl.SSLContext:
    """One context per setting for the process: building one loads the system trust
    store, far too slow to do per visitor connection."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _reason(exc: BaseException | None) -> str:
    return f": {exc}" if exc is not None else ""
