"""TCP endpoints: a public port whose every connection becomes one stream to the agent."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay.edge.members import serving_session
from relay.mux import Pump
from relay.protocol import StreamHeader, StreamProtocol

if TYPE_CHECKING:
    from relay.edge.registry import Holder


def format_address(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


class Refuse(asyncio.Protocol):
    """A visitor arrived while no agent serves the endpoint (or an agent link while the
    edge is full or draining): reset at once, say nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any transport: uvloop's, or the agent link's TlsLinkTransport (which is not an
        # asyncio.Transport subclass, so an isinstance check would leave the link open).
        abort = getattr(transport, "abort", None)
        if abort is not None:
            abort()
        else:
            transport.close()


class _HandOver(asyncio.Protocol):
    """A visitor of a port whose members here are gone while another worker's serve it
    (a pool member or a link that left): its socket goes to that worker."""

    def __init__(self, endpoint: TcpEndpoint) -> None:
        self.endpoint = endpoint

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.endpoint.handed_over(transport)
        abort = getattr(transport, "abort", None)
        (abort or transport.close)()  # our descriptor only, when it was handed over


class TcpEndpoint:
    kind = "tcp"

    def __init__(
        self, endpoint_id: str, port: int, holder: Holder, public_host: str, refused: Any
    ) -> None:
        """``refused``: the counter of visitors turned away while no agent serves it."""
        self.endpoint_id = endpoint_id
        self.port = port
        self.holder = holder
        self.public_host = public_host
        self.refused = refused
        #: Whether each visitor's connection gets an access log line.
        self.log_access = False
        #: Its own metric series' slot (relay/edge/endpoint_series.py; 0: none).
        self.metric_slot = 0
        self.server: asyncio.AbstractServer | None = None
        self.orphan_timer: asyncio.TimerHandle | None = None
        #: Every session serving it, ``holder`` first (relay/edge/members.py).
        self.members: list[Holder] = [holder]
        self.turn = 0
        #: Workers: hands a visitor's descriptor to a worker whose members of this port
        #: serve, while none here does (False: none does anywhere).
        self.hand_off: Callable[[int, str], bool] | None = None

    @property
    def key(self) -> str:
        return f"tcp:{self.port}"

    @property
    def url(self) -> str:
        return f"tcp://{self.public_host}:{self.port}"

    async def listen(self, host: str, *, reuse_port: bool = False) -> None:
        """``reuse_port``: workers of one edge that hold this endpoint each listen."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._new_visitor,
            host,
            self.port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )

    def _new_visitor(self, *, again: bool = False) -> asyncio.BaseProtocol:
        """``again``: the session first chosen went away before the socket connected."""
        session = serving_session(self)
        if session is None:
            if self.hand_off is not None:
                return _HandOver(self)
            self.refused.inc()
            return Refuse()
        pump = self._pump(session)
        if not again:
            pump.reroute = functools.partial(self._new_visitor, again=True)
        return pump

    def adopt(self, *, again: bool = False) -> asyncio.BaseProtocol:
        """A visitor another worker handed here: served here or refused, never again
        handed on."""
        session = serving_session(self)
        if session is None:
            self.refused.inc()
            return Refuse()
        pump = self._pump(session)
        if not again:
            pump.reroute = functools.partial(self.adopt, again=True)
        return pump

    def _pump(self, session: Any) -> Pump:
        pump = Pump(session.link, header_factory=self._header)
        if self.metric_slot:
            pump.metric_slot = self.metric_slot
        if self.log_access:
            pump.log_endpoint = self.url
        return pump

    def handed_over(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        assert self.hand_off is not None
        if sock is None or not self.hand_off(sock.fileno(), self.key):
            self.refused.inc()

    def _header(self, transport: asyncio.BaseTransport) -> bytes:
        return StreamHeader(
            endpoint_id=self.endpoint_id,
            visitor_addr=format_address(transport.get_extra_info("peername")),
            protocol=StreamProtocol.TCP,
        ).to_wire()

    def close(self) -> None:
        if self.orphan_timer is not None:
            self.orphan_timer.cancel()
            self.orphan_timer = None
        if self.server is not None:
            # Not wait_closed(): it would wait for live visitor connections too.
            self.server.close()
            self.server = None
