"""The agent session: connect with backoff, authenticate, bind, serve visitor streams."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay import __version__
from relay.agent.backoff import Backoff
from relay.agent.proxy_protocol import encode_v1, encode_v2, parse_visitor_addr
from relay.edge.error_pages import render
from relay.errors import (
    AuthError,
    BindError,
    ConnectError,
    ProtocolViolation,
    RelayError,
    TlsError,
    error_from_code,
)
from relay.mux import ControlChannel, MuxConfig, MuxStream, StreamReset
from relay.mux import Pump as _Pump
from relay.protocol import (
    Auth,
    AuthOk,
    Bind,
    Bound,
    Message,
    Notice,
    Restart,
    Stop,
    StreamHeader,
    StreamProtocol,
)
from relay.protocol import AuthError as AuthErrorMessage
from relay.protocol import BindError as BindErrorMessage
from relay.tls import check_pin, client_context
from relay.tlslink import connect_link

log = logging.getLogger("relay.agent")

#: How long a visitor stream may take to deliver its StreamHeader.
HEADER_TIMEOUT = 10.0
#: How long dialling the upstream may take before the visitor is reset.
UPSTREAM_CONNECT_TIMEOUT = 10.0
#: How long the edge may take to answer Auth or Bind.
REPLY_TIMEOUT = 15.0


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
    agent_id: str = field(default_factory=lambda: "a_" + secrets.token_hex(8))


class SessionEnded(Exception):
    """The link is gone; reconnect."""


class FatalAgentError(RelayError):
    """Reconnecting would not help (bad token, forbidden bind, Stop from the edge)."""


class Agent:
    def __init__(
        self, options: AgentOptions, *, status: Callable[[str], None] | None = None
    ) -> None:
        self.options = options
        self.status = status or (lambda line: log.info("%s", line))
        self.backoff = Backoff()
        self.bound: dict[str, BoundEndpoint] = {}  # endpoint_id -> endpoint
        self.remembered_ports: dict[EndpointSpec, int] = {}
        self.link: Any = None
        self.sessions_started = 0
        self._stopping = False
        self._session_done: asyncio.Future[BaseException | None] | None = None
        self._control: ControlChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped; raise FatalAgentError (or an AuthError/BindError) when the
        edge refuses us for a reason that reconnecting would not fix."""
        while not self._stopping:
            try:
                await self._run_session()
            except (AuthError, FatalAgentError):
                raise
            except BindError:
                if not self.sessions_started_ok:
                    raise
                log.warning("re-binding failed; will retry")
            except (OSError, ConnectError, TlsError, SessionEnded, ProtocolViolation) as exc:
                if self._stopping:
                    break
                self.status(f"session lost: {exc}; reconnecting")
            if self._stopping:
                break
            delay = self.backoff.next_delay()
            log.info("reconnecting in %.2fs", delay)
            await asyncio.sleep(delay)

    @property
    def sessions_started_ok(self) -> bool:
        return self.sessions_started > 0

    def stop(self) -> None:
        self._stopping = True
        if self.link is not None and not self.link.closed:
            self.link.session.go_away(0)
            self.link.close()
        if self._session_done is not None and not self._session_done.done():
            self._session_done.set_result(None)

    async def _run_session(self) -> None:
        loop = asyncio.get_running_loop()
        options = self.options
        ctx = client_context(ca_file=options.ca_file, pin=options.pin)
        self._session_done = loop.create_future()
        link = options.mux.new_link(self, loop, client=True)
        server_name = options.server_name or options.edge_host
        try:
            await asyncio.wait_for(
                connect_link(
                    loop,
                    lambda: link,
                    options.edge_host,
                    options.edge_port,
                    ssl_context=ctx,
                    server_hostname=server_name,
                    handshake_timeout=options.connect_timeout,
                ),
                options.connect_timeout + 1,
            )
        except TimeoutError:
            raise ConnectError(f"timed out connecting to {options.edge_host}") from None
        except ssl_errors() as exc:
            raise TlsError(f"TLS with the edge failed: {exc}") from None
        except OSError as exc:
            raise ConnectError(
                f"cannot reach the edge at {options.edge_host}:{options.edge_port}: "
                f"{exc.strerror or exc}"
            ) from None
        try:
            await self._handshake(link)
            self.sessions_started += 1
            self.backoff.reset()
            await self._serve_control()
        finally:
            if not link.closed:
                link.close()
            self.link = None

    async def _handshake(self, link: Any) -> None:
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
            )
        )
        reply = await self._reply(control)
        if isinstance(reply, AuthErrorMessage):
            raise error_from_code(reply.code, reply.message)
        if not isinstance(reply, AuthOk):
            raise ProtocolViolation(f"expected auth_ok, got {reply.TYPE}")
        self.status(f"session {reply.session_id} established (edge {reply.edge_version})")
        self.bound.clear()
        for request_id, spec in enumerate(self.options.endpoints, start=1):
            port = self.remembered_ports.get(spec, spec.remote_port)
            control.send(
                Bind(
                    request_id,
                    spec.kind,
                    spec.name,
                    port,
                    spec.upstream,
                    domain=spec.domain,
                    subdomain=spec.subdomain,
                    host_header=spec.host_header_value,
                )
            )
            answer = await self._reply(control)
            if isinstance(answer, BindErrorMessage):
                raise error_from_code(answer.code, answer.message)
            if not isinstance(answer, Bound):
                raise ProtocolViolation(f"expected bound, got {answer.TYPE}")
            self.bound[answer.endpoint_id] = BoundEndpoint(
                spec, answer.endpoint_id, answer.url, answer.remote_port
            )
            self.remembered_ports[spec] = answer.remote_port
            self.status(f"Forwarding  {answer.url} -> {spec.upstream}")

    async def _reply(self, control: ControlChannel) -> Message:
        try:
            return await asyncio.wait_for(self._recv_or_end(control), REPLY_TIMEOUT)
        except TimeoutError:
            raise SessionEnded("the edge did not answer in time") from None

    async def _recv_or_end(self, control: ControlChannel) -> Message:
        try:
            return await control.recv()
        except (EOFError, StreamReset):
            exc = self.link.close_exc if self.link is not None else None
            raise SessionEnded(f"the edge closed the session{_reason(exc)}") from None

    async def _serve_control(self) -> None:
        control = self._control
        assert control is not None and self._session_done is not None
        receiver = asyncio.ensure_future(self._control_loop(control))
        try:
            waiting: set[asyncio.Future[Any]] = {receiver, self._session_done}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiver.cancel()
        failure = receiver.exception() if receiver.done() and not receiver.cancelled() else None
        if failure is not None:
            raise failure
        if not self._stopping:
            raise SessionEnded("the link closed")

    async def _control_loop(self, control: ControlChannel) -> None:
        while True:
            message = await self._recv_or_end(control)
            if isinstance(message, Stop):
                raise FatalAgentError(message.message, code=message.code)
            if isinstance(message, Restart):
                # The edge is draining: its GoAway stops new streams, live ones finish, and
                # the edge closes the link when they are done; then we reconnect.
                self.status(f"the edge is draining ({message.message}); will reconnect")
            if isinstance(message, Notice):
                self.status(f"notice from the edge: {message.message}")
            else:
                log.warning("ignoring unexpected %s from the edge", message.TYPE)

    # --- Link handler -----------------------------------------------------------------

    def link_made(self, link: Any) -> None:
        self.link = link

    def stream_opened(self, stream_id: int) -> None:
        link = self.link
        link.session.accept_stream(stream_id)
        channel = link.open_buffer_channel(stream_id)
        task = asyncio.get_running_loop().create_task(self._serve_visitor(link, channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def goaway(self, code: int) -> None:
        log.info("edge sent GoAway(%d)", code)

    def pong(self, rtt_us: int) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        done = self._session_done
        if done is not None and not done.done():
            done.set_result(exc)

    # --- visitors ---------------------------------------------------------------------

    async def _serve_visitor(self, link: Any, channel: Any) -> None:
        stream_id = int(channel.stream_id)
        stream = MuxStream(link, channel)
        header: StreamHeader | None = None
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the awaitable in one more
            # task, per visitor connection.
            async with asyncio.timeout(HEADER_TIMEOUT):
                parsed, used = await self._read_header(channel)
            header = parsed
            endpoint = self.bound.get(parsed.endpoint_id)
            if endpoint is None:
                raise ProtocolViolation(f"stream for unknown endpoint {parsed.endpoint_id}")
            channel.take(used)
            channel.hold()  # credit waits until the upstream is there to take the bytes
            spec = endpoint.spec
            preamble = proxy_preamble(spec, parsed.visitor_addr)
            ctx = (
                upstream_tls_context(spec.upstream_tls_verify)
                if spec.upstream_scheme == "https"
                else None
            )
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT):
                await loop.create_connection(
                    lambda: _Pump(link, stream_id=stream_id, preamble=preamble),
                    spec.upstream_host,
                    spec.upstream_port,
                    ssl=ctx,
                    server_hostname=spec.upstream_host if ctx is not None else None,
                )
        except (OSError, TimeoutError, RelayError, StreamReset, ssl.SSLError) as exc:
            log.info("visitor stream %d: %s", stream_id, exc)
            if header is not None and header.protocol in (
                StreamProtocol.HTTP,
                StreamProtocol.HTTPS,
            ):
                self._answer_with_error(link, stream_id, header, exc)
            else:
                stream.reset()

    def _answer_with_error(
        self, link: Any, stream_id: int, header: StreamHeader, exc: BaseException
    ) -> None:
        """The visitor speaks HTTP: tell them what went wrong, with a code, then end."""
        if link.closed or stream_id not in link.channels:
            return
        if isinstance(exc, TimeoutError):
            status, code, text = 504, "RLY_614", "the upstream did not answer in time"
        else:
            status, code, text = 502, "RLY_613", "the agent could not reach the upstream"
        page = render(
            status, code, text, accept=header.extra.get("accept"), request_id=secrets.token_hex(8)
        )
        link.channels.pop(stream_id, None)
        link.send(stream_id, page)
        link.session.close_stream(stream_id)
        link.schedule_flush()

    async def _read_header(self, channel: Any) -> tuple[StreamHeader, int]:
        while True:
            if channel.reset:
                raise StreamReset("visitor went away before its header arrived")
            parsed = StreamHeader.parse(channel.peek())
            if parsed is not None:
                return parsed
            if channel.fin:
                raise ProtocolViolation("stream ended inside its header")
            await channel.wait()


def ssl_errors() -> tuple[type[BaseException], ...]:
    return (ssl.SSLError, ssl.CertificateError)


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
