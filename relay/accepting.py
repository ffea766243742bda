"""Accepting on a listening socket without spinning when descriptors run out.

A listening socket watched with ``loop.add_reader`` stays readable while a connection
waits in its backlog. When ``accept`` fails for want of a descriptor (EMFILE: the
process's RLIMIT_NOFILE; ENFILE: the system's file table) or of kernel memory (ENOBUFS,
ENOMEM), that connection stays queued — so a reader that logs and returns is called
again at once: 100% CPU and tens of thousands of log lines a second for as long as the
process stays at its limit, starving the connections it already serves.

:class:`AcceptLoop` stops watching the socket instead, logs one warning for the episode,
and tries again after a backoff (50 ms doubling to 1 s). Waiting connections stay in
the kernel's backlog meanwhile and are accepted as soon as descriptors are free; one
INFO line says so.

Listeners whose accepts libuv makes (uvloop's ``create_server``) do not spin: at EMFILE
or ENFILE libuv's "emfile trick" gives up a spare descriptor, accepts every waiting
connection into it and closes it at once — visitors are dropped, silently. For those,
:class:`LimitWatch` checks once a period whether the process could open one more
descriptor and logs one warning while it cannot (one INFO line when it can again).

Standard library only, no other relay module: the edge's TLS port and the agent-link
listener (``relay/tlslink.py``, a floor below the edge) both use it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["AcceptLoop", "LimitWatch", "OnConnection"]

log = logging.getLogger("relay.accepting")

#: ``on_connection(conn, address)``: the accepted socket is the callee's (non-blocking).
OnConnection = Callable[[socket.socket, Any], None]

#: accept() cannot take a connection now: out of descriptors or memory.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() reports a connection that died in the backlog (accept(2), "Error handling"
#: lists the pending network errors Linux passes on): skip it and take the next.
SKIPPED = frozenset(
    code
    for code in (
        getattr(errno, name, None)
        for name in (
            "ECONNABORTED",
            "EPROTO",
            "EPERM",
            "ENETDOWN",
            "ENOPROTOOPT",
            "EHOSTDOWN",
            "ENONET",
            "EHOSTUNREACH",
            "EOPNOTSUPP",
            "ENETUNREACH",
        )
    )
    if code is not None
)


class AcceptLoop:
    """Accepts connections on ``sock`` (a listening socket) with ``loop.add_reader``.

    Up to ``per_wakeup`` connections per readiness callback, so other work gets its
    turn. Each goes to ``on_connection(conn, address)`` already non-blocking. ``what``
    names the listener in log lines (e.g. ``"TLS port"``). :meth:`close` stops
    accepting; the socket stays the caller's to close.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_connection: OnConnection,
        *,
        what: str,
        per_wakeup: int = 64,
        first_backoff: float = 0.05,
        max_backoff: float = 1.0,
    ) -> None:
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self.on_connection = on_connection
        self.what = what
        self.per_wakeup = per_wakeup
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.where = f"{what} {_format(sock.getsockname())}"
        #: Times accepting was paused (each episode counts once, however many retries).
        self.pauses_total = 0
        self._fd = sock.fileno()
        self._delay = first_backoff
        self._paused_at: float | None = None  # loop time the current episode began
        self._retry: asyncio.TimerHandle | None = None
        self._watching = False
        self._closed = False
        self._watch()

    @property
    def paused(self) -> bool:
        """True from a failed accept until one succeeds again."""
        return self._paused_at is not None

    def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._unwatch()

    # --- internals ----------------------------------------------------------------------

    def _watch(self) -> None:
        if not self._watching and not self._closed:
            self.loop.add_reader(self._fd, self._ready)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self.loop.remove_reader(self._fd)

    def _ready(self) -> None:
        for _ in range(self.per_wakeup):
            if self._closed:
                return
            try:
                conn, address = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in SKIPPED:
                    continue
                self._pause(exc)
                return
            if self._paused_at is not None:
                self._recovered()
            conn.setblocking(False)
            try:
                self.on_connection(conn, address)
            except Exception:  # one connection's bug must not stop the listener
                log.exception("%s: handling a new connection failed", self.where)
                conn.close()

    def _pause(self, exc: OSError) -> None:
        """Stop watching: the queued connection would wake us again at once."""
        self._unwatch()
        if self._paused_at is None:
            self._paused_at = self.loop.time()
            self._delay = self.first_backoff
            self.pauses_total += 1
            level = logging.WARNING if exc.errno in EXHAUSTED else logging.ERROR
            log.log(level, "%s; pausing accepts on %s", _describe(exc), self.where)
        else:
            self._delay = min(self._delay * 2, self.max_backoff)
        self._retry = self.loop.call_later(self._delay, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if self._closed or self.sock.fileno() == -1:
            return
        self._watch()
        # Connections waiting in the backlog make the socket readable: _ready runs next.

    def _recovered(self) -> None:
        assert self._paused_at is not None
        paused_for = self.loop.time() - self._paused_at
        self._paused_at = None
        self._delay = self.first_backoff
        log.info("accepting again on %s after %.1f s", self.where, paused_for)


class LimitWatch:
    """Says when listeners that libuv accepts for (``what`` names them) are dropping
    connections for want of descriptors. The limit is the process's, so one watch serves
    them all: every ``period`` seconds one ``dup`` of a descriptor it holds (closed at
    once) shows whether the process could take one more. One WARNING when it cannot,
    one INFO when it can again; nothing per connection. :meth:`close` stops it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, what: str, period: float = 1.0) -> None:
        self.loop = loop
        self.what = what
        self.period = period
        #: Times the limit was found reached (each episode counts once).
        self.episodes_total = 0
        self._probe: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._exhausted = False
        self._timer: asyncio.TimerHandle | None = loop.call_later(period, self._check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._probe is not None:
            os.close(self._probe)
            self._probe = None

    def _check(self) -> None:
        self._timer = None
        assert self._probe is not None
        try:
            os.close(os.dup(self._probe))
        except OSError as exc:
            if exc.errno not in EXHAUSTED:
                raise
            if not self._exhausted:
                self._exhausted = True
                self.episodes_total += 1
                log.warning(
                    "%s; %s close new connections as they arrive until descriptors are free",
                    _describe(exc),
                    self.what,
                )
        else:
            if self._exhausted:
                self._exhausted = False
                log.info("descriptors free again; %s take connections again", self.what)
        self._timer = self.loop.call_later(self.period, self._check)


def _describe(exc: OSError) -> str:
    if exc.errno == errno.EMFILE:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return f"descriptor limit reached (RLIMIT_NOFILE {soft})"
    if exc.errno == errno.ENFILE:
        return "system-wide file table full (ENFILE)"
    if exc.errno in (errno.ENOBUFS, errno.ENOMEM):
        return f"out of kernel memory for a connection ({errno.errorcode[exc.errno]})"
    return f"accept failed: {exc}"


def _format(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
