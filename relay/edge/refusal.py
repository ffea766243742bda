"""Refusing an HTTP visitor whose request no worker or node here can take, once the
part of the edge that read its head has let go of it: a worker whose handoff waited in
vain (relay/edge/worker.py), a node whose forward found no link (relay/edge/cluster.py).

The visitor gets the page a failed handoff gets at once (503 RLY_611), then the socket
lingers: closing it with the visitor's bytes unread would make the kernel answer with a
reset, and the visitor, still sending its body, would lose the page.
"""

from __future__ import annotations

import asyncio
import secrets
import socket

from relay.error_pages import render

__all__ = ["LINGER_BYTES", "LINGER_FOR", "unreachable_page"]

#: After a refusal page, how long and how much more a visitor may send (the rest of its
#: request's body) before its socket closes.
LINGER_FOR = 2.0
LINGER_BYTES = 1 << 20


def unreachable_page(sock: socket.socket) -> None:
    """Say that the agent serving the visitor on ``sock`` cannot be reached, as one edge
    would, and close gently. Works on a copy of the descriptor: the caller still owns
    and closes ``sock``."""
    page = render(
        503,
        "RLY_611",
        "the agent serving this host cannot be reached",
        accept=None,
        request_id=secrets.token_hex(8),
        head=False,
    )
    try:
        kept = sock.dup()
    except OSError:
        return
    _LingeringClose(asyncio.get_running_loop(), kept, page)


class _LingeringClose:
    """Send ``page``, shut the sending side, and read and drop what the visitor still
    sends until it closes, ``LINGER_BYTES`` came or ``LINGER_FOR`` passed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, page: bytes):
        self.loop = loop
        self.sock = sock
        self.left = LINGER_BYTES
        sock.setblocking(False)
        try:
            sock.send(page)  # a small page into an idle socket's empty buffer
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self.fd = sock.fileno()
        loop.add_reader(self.fd, self._read)
        self.timer = loop.call_later(LINGER_FOR, self._close)

    def _read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.left -= len(data)
        if not data or self.left <= 0:
            self._close()

    def _close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self.loop.remove_reader(self.fd)
        self.timer.cancel()
        self.sock.close()
