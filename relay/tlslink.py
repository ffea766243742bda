"""Connecting and accepting agent links: TCP, then TLS straight on the socket.

The handshake is the standard library's (``SSLSocket.do_handshake`` on a non-blocking
socket, awaited on the event loop); the data path afterwards is
``relay._tlslink.TlsLinkTransport`` (OpenSSL on the socket, no memory BIOs). Where that
transport cannot be used (see ``relay._tlslink.unavailable``), both functions fall back
to uvloop's own TLS transport with the same arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from relay import _tlslink
from relay.accepting import AcceptLoop

log = logging.getLogger("relay.tlslink")

#: Handshakes the edge runs at once; connections beyond this are closed at accept (the
#: agents retry with backoff), so a flood of idle TCP connections cannot pile up.
MAX_PENDING_HANDSHAKES = 1024
#: Accepts per readable callback of the listening socket, so other work gets a turn.
ACCEPTS_PER_WAKEUP = 64

ProtocolFactory = Callable[[], Any]


class Listener(Protocol):
    """What the edge needs of a listening server: ours, or uvloop's ``Server``."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...

    def close(self) -> None: ...


@functools.cache
def _self_test() -> str | None:
    """Prove the SSL* layout once, on a throwaway socket pair: a mismatch must mean the
    uvloop fallback, not a failed link. Why the direct transport cannot be used, or None."""
    reason = _tlslink.unavailable()
    if reason is not None:
        return reason
    a, b = socket.socketpair()
    try:
        with ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).wrap_socket(
            a, server_hostname="relay.invalid", do_handshake_on_connect=False
        ) as probe:
            _tlslink.check_layout(probe)
    except (RuntimeError, AttributeError, OSError) as exc:
        return f"layout check failed: {exc}"
    finally:
        a.close()
        b.close()
    log.debug("agent link TLS: OpenSSL on the socket (direct)")
    return None


def direct_tls() -> bool:
    """True when links use the direct transport in this process."""
    # RELAY_TLS_DIRECT=0 is read each time (tests flip it); the layout proof runs once.
    reason = _tlslink.unavailable() or _self_test()
    if reason is not None:
        _log_fallback(reason)
    return reason is None


@functools.cache
def _log_fallback(reason: str) -> None:
    log.debug("agent link TLS: uvloop's transport (%s)", reason)


async def _wait_fd(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    waiter = loop.create_future()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await waiter
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _handshake(
    loop: asyncio.AbstractEventLoop, sslsock: ssl.SSLSocket, timeout: float
) -> None:
    fd = sslsock.fileno()
    async with asyncio.timeout(timeout):
        while True:
            try:
                sslsock.do_handshake()
                return
            except ssl.SSLWantReadError:
                await _wait_fd(loop, fd, write=False)
            except ssl.SSLWantWriteError:
                await _wait_fd(loop, fd, write=True)


def _tune(sock: socket.socket) -> None:
    # uvloop sets TCP_NODELAY on its TCP transports; ours must too (small frames such as
    # window updates and pings must not wait for Nagle).
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def connect_link(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: ProtocolFactory,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    server_hostname: str,
    handshake_timeout: float,
) -> tuple[Any, Any]:
    """Dial ``host:port``, do the TLS handshake, start ``protocol_factory()`` on it."""
    if not direct_tls():
        return await loop.create_connection(
            protocol_factory,
            host,
            port,
            ssl=ssl_context,
            server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout,
        )
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    last: OSError | None = None
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return await _start_client(
            loop, protocol_factory, sock, ssl_context, server_hostname, handshake_timeout
        )
    assert last is not None
    raise last


async def _start_client(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: ProtocolFactory,
    sock: socket.socket,
    ssl_context: ssl.SSLContext,
    server_hostname: str,
    handshake_timeout: float,
) -> tuple[Any, Any]:
    _tune(sock)
    try:
        sslsock = ssl_context.wrap_socket(
            sock, server_hostname=server_hostname, do_handshake_on_connect=False
        )
    except BaseException:
        sock.close()
        raise
    try:
        transport = _tlslink.TlsLinkTransport(loop, sslsock)
        await _handshake(loop, sslsock, handshake_timeout)
    except BaseException:
        sslsock.close()
        raise
    protocol = protocol_factory()
    try:
        transport.start(protocol)
    except BaseException:
        transport.abort()  # closes the socket; nothing was attached
        raise
    return transport, protocol


class LinkServer:
    """The edge's listening sockets for agent links (``asyncio.Server``'s few methods)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        protocol_factory: ProtocolFactory,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
        on_handshake: Callable[[bool], None] | None = None,
        admit: Callable[[Any], bool] | None = None,
        what: str = "agent link",
    ) -> None:
        self.loop = loop
        self.sockets = sockets
        #: How the log names a connection here (``agent link``, ``node link``).
        self.what = what
        self._factory = protocol_factory
        self._ctx = ssl_context
        self._timeout = handshake_timeout
        self._on_handshake = on_handshake or (lambda ok: None)
        self._admit = admit or (lambda address: True)
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closed = False
        # At the descriptor limit an AcceptLoop pauses (one log line) instead of spinning
        # on the connection that stays queued.
        self._acceptors = [
            AcceptLoop(
                loop,
                sock,
                self._accepted,
                what=f"{what.removesuffix(' link')} listener",  # "agent listener"
                per_wakeup=ACCEPTS_PER_WAKEUP,
            )
            for sock in sockets
        ]

    def _accepted(self, conn: socket.socket, address: Any) -> None:
        if not self._admit(address):
            conn.close()  # refused before its TLS handshake costs anything
            return
        if len(self._handshakes) >= MAX_PENDING_HANDSHAKES:
            log.warning("refusing %s: %d handshakes in progress", self.what, len(self._handshakes))
            conn.close()
            return
        task = self.loop.create_task(self._serve(conn))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _serve(self, conn: socket.socket) -> None:
        _tune(conn)
        try:
            peer = conn.getpeername()
        except OSError:
            conn.close()
            return
        sslsock: ssl.SSLSocket | None = None
        try:
            sslsock = self._ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            transport = _tlslink.TlsLinkTransport(self.loop, sslsock)
            await _handshake(self.loop, sslsock, self._timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.info("%s from %s: TLS handshake failed: %s", self.what, peer, exc or "timed out")
            self._on_handshake(False)
            (sslsock or conn).close()
            return
        except BaseException:
            (sslsock or conn).close()
            raise
        self._on_handshake(True)
        if self._closed:
            sslsock.close()
            return
        try:
            transport.start(self._factory())
        except OSError as exc:
            # The peer reset right after its handshake: nothing was started, so nothing
            # (no session, no place among max_sessions) is held for it.
            log.info("%s from %s: gone before it started: %s", self.what, peer, exc)
            transport.abort()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for acceptor in self._acceptors:
            acceptor.close()
        for sock in self.sockets:
            sock.close()
        for task in list(self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)


async def serve_links(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: ProtocolFactory,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    handshake_timeout: float,
    backlog: int = 1024,
    on_handshake: Callable[[bool], None] | None = None,
    admit: Callable[[Any], bool] | None = None,
    reuse_port: bool = False,
    what: str = "agent link",
) -> Listener:
    """Listen for agent links on ``host:port``; each gets ``protocol_factory()`` once its
    TLS handshake is done. ``on_handshake(ok)`` hears of every handshake's outcome, and
    ``admit(address)`` False closes a connection before its handshake (neither with
    uvloop's TLS, whose handshakes are its own: the link handler checks then)."""
    if not direct_tls():
        return await loop.create_server(
            protocol_factory,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=handshake_timeout,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=backlog,
        )
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # one listener per worker (relay/cluster/): the kernel spreads
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return LinkServer(
        loop, sockets, protocol_factory, ssl_context, handshake_timeout, on_handshake, admit, what
    )
