"""The supervisor's admin listener (``relay edge --workers N``): the edge, seen as one.

It listens at ``admin_listen`` itself; worker *i*'s own admin listener is at that port
+ 1 + *i* (for a look at one worker).

* ``/metrics``: every worker's ``/metrics``, scraped now (all at once, each within
  :data:`SCRAPE_TIMEOUT`), combined by :mod:`relay.metrics_sum`, with the
  supervisor's own process metrics added in and four families of its own:
  ``relay_edge_workers``, ``relay_edge_workers_answering``,
  ``relay_edge_worker_restarts_total`` and ``relay_edge_worker_scrape_failures_total``.
* ``/healthz``: the supervisor is alive.
* ``/readyz``: 200 while every worker's ``/readyz`` is; 503 naming those that are not.
* ``/status``: every worker's ``/status`` (read at once, each within
  :data:`SCRAPE_TIMEOUT`), combined by :mod:`relay.cluster.status_sum`.
* Anything else (the API under ``/api/``) is passed through, byte for byte, to the
  first worker that takes the connection: worker 0 unless it is being started again.
  Any worker's API speaks for all of them (relay/edge/worker_asks.py).

The same limits as a worker's listener: a head of at most 8 KiB, within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from relay.admin import HEAD_TIMEOUT, MAX_HEAD
from relay.cluster.status_sum import combine_status
from relay.errors import ListenError
from relay.metrics_sum import MetricsSum, Scrape, render

__all__ = ["SCRAPE_TIMEOUT", "SupervisorAdmin", "WorkerView"]

log = logging.getLogger("relay.admin")

#: How long one worker's /metrics or /readyz may take before it counts as not answering.
SCRAPE_TIMEOUT = 2.0
#: The largest /metrics a worker may send (with thousands of per-endpoint series).
MAX_SCRAPE = 64 * 1024 * 1024
#: A passed-through request and its answer must be done within this.
PASS_TIMEOUT = 120.0
_GET_ONLY = (b"GET", b"HEAD")


@dataclass(frozen=True)
class WorkerView:
    """What the supervisor knows of one worker now."""

    index: int
    pid: int | None  # None: not running (being started again)
    restarts: int


class SupervisorAdmin:
    def __init__(self, host: str, port: int, workers: Callable[[], list[WorkerView]]) -> None:
        """``port``: the supervisor's; worker i's is port + 1 + i."""
        self.host = host
        self.port = port
        self.workers = workers
        #: Where the workers' listeners are reached (a wildcard bind is reached on loopback).
        self.worker_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        self.sum = MetricsSum()
        self.scrape_failures: dict[int, int] = {}
        self._own = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._own)
        PlatformCollector(registry=self._own)
        GCCollector(registry=self._own)
        self.server: asyncio.AbstractServer | None = None
        self._scraping = asyncio.Lock()

    def worker_port(self, index: int) -> int:
        return self.port + 1 + index

    async def start(self) -> None:
        try:
            self.server = await asyncio.start_server(
                self._serve, self.host, self.port, reuse_address=True, limit=MAX_HEAD
            )
        except OSError as exc:
            raise ListenError.for_address(
                f"{self.host}:{self.port}", "--admin-listen", exc
            ) from None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    # --- the edge's answers ------------------------------------------------------------

    async def metrics(self) -> bytes:
        # One scrape at a time: answers must reach the sum in the order they were read.
        async with self._scraping:
            return await self._metrics()

    async def _metrics(self) -> bytes:
        views = self.workers()
        scraped = await asyncio.gather(*(self._scrape(v) for v in views))
        # A worker started again while it was scraped may have answered as its new
        # process: that answer is not its old process's last count (and is left out).
        now = {v.index: v.pid for v in self.workers()}
        answers: dict[int, tuple[int, Scrape] | None] = {}
        for view, scrape in zip(views, scraped, strict=True):
            if scrape is None or view.pid is None or now.get(view.index) != view.pid:
                answers[view.index] = None
                self.scrape_failures[view.index] = self.scrape_failures.get(view.index, 0) + 1
            else:
                answers[view.index] = (view.pid, scrape)
        own = Scrape.parse(generate_latest(self._own).decode("utf-8"))
        families = self.sum.combine(answers, own=own)
        answering = sum(1 for a in answers.values() if a is not None)
        return render([*families, *self._own_families(views, answering)])

    async def _scrape(self, view: WorkerView) -> Scrape | None:
        if view.pid is None:
            return None
        got = await self._get(view.index, b"/metrics")
        if got is None or got[0] != 200:
            return None
        try:
            return Scrape.parse(got[1].decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("worker %d's /metrics could not be read: %s", view.index, exc)
            return None

    def _own_families(self, views: list[WorkerView], answering: int) -> Iterator[Metric]:
        workers = GaugeMetricFamily("relay_edge_workers", "worker processes of this edge")
        workers.add_metric([], len(views))
        yield workers
        up = GaugeMetricFamily(
            "relay_edge_workers_answering", "workers whose /metrics this scrape has"
        )
        up.add_metric([], answering)
        yield up
        restarts = CounterMetricFamily(
            "relay_edge_worker_restarts",
            "worker processes started again after one exited",
            labels=["worker"],
        )
        failures = CounterMetricFamily(
            "relay_edge_worker_scrape_failures",
            "scrapes of the edge that lacked a worker's answer (its counters as last seen)",
            labels=["worker"],
        )
        for view in views:
            restarts.add_metric([str(view.index)], view.restarts)
            failures.add_metric([str(view.index)], self.scrape_failures.get(view.index, 0))
        yield restarts
        yield failures

    async def readiness(self) -> tuple[bool, str]:
        views = self.workers()
        answers = await asyncio.gather(*(self._get(v.index, b"/readyz") for v in views))
        why = []
        for view, got in zip(views, answers, strict=True):
            if view.pid is None or got is None:
                why.append(f"worker {view.index}: not answering")
            elif got[0] != 200:
                text = got[1].decode("utf-8", "replace").strip().removeprefix("not ready: ")
                why.append(f"worker {view.index}: {text}")
        return not why, "; ".join(why)

    async def status(self) -> dict[str, Any]:
        """The edge's /status: every worker's, combined."""
        views = self.workers()
        answers = await asyncio.gather(*(self._get(v.index, b"/status") for v in views))
        return combine_status(
            [
                (view.index, view.pid, _json_object(got[1]) if got and got[0] == 200 else None)
                for view, got in zip(views, answers, strict=True)
            ]
        )

    async def _get(self, index: int, path: bytes) -> tuple[int, bytes] | None:
        """One GET to worker ``index``'s listener: (status, body), or None."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    self.worker_host, self.worker_port(index)
                )
                writer.write(b"GET %b HTTP/1.0\r\nhost: supervisor\r\n\r\n" % path)
                chunks: list[bytes] = []
                size = 0
                while chunk := await reader.read(65536):
                    size += len(chunk)
                    if size > MAX_SCRAPE + MAX_HEAD:
                        return None
                    chunks.append(chunk)
        except (OSError, TimeoutError):
            return None
        finally:
            if writer is not None:
                writer.close()
        head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
        status = head.split(b" ", 2)
        if not sep or len(status) < 2 or not status[1].isdigit():
            return None
        return int(status[1]), body

    # --- the listener -----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return  # too large, too slow or cut: dropped, as a worker does
            request_line = head.split(b"\r\n", 1)[0].split(b" ")
            if len(request_line) != 3:
                await _answer(writer, 400, "text/plain", b"bad request\n")
                return
            method, target = request_line[0], request_line[1]
            path = target.split(b"?", 1)[0]
            if path not in (b"/metrics", b"/healthz", b"/readyz", b"/status"):
                await self._pass_through(head, reader, writer)
                return
            if method not in _GET_ONLY:
                await _answer(writer, 405, "text/plain", b"GET only\n")
                return
            if path == b"/healthz":
                status, kind, body = 200, "text/plain", b"ok\n"
            elif path == b"/readyz":
                ready, why = await self.readiness()
                status, kind = (200, "text/plain") if ready else (503, "text/plain")
                body = b"ready\n" if ready else f"not ready: {why}\n".encode()
            elif path == b"/status":
                status, kind = 200, "application/json"
                body = json.dumps(await self.status()).encode()
            else:
                try:
                    status, kind, body = 200, CONTENT_TYPE_LATEST, await self.metrics()
                except Exception:  # a bug here must not take the listener down
                    log.exception("the edge's /metrics failed")
                    status, kind, body = 500, "text/plain", b"internal error\n"
            await _answer(writer, status, kind, b"" if method == b"HEAD" else body, len(body))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _pass_through(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        for view in self.workers():
            try:
                async with asyncio.timeout(SCRAPE_TIMEOUT):
                    up_reader, up_writer = await asyncio.open_connection(
                        self.worker_host, self.worker_port(view.index)
                    )
            except (OSError, TimeoutError):
                continue
            try:
                up_writer.write(head)
                async with asyncio.timeout(PASS_TIMEOUT):
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            except (OSError, TimeoutError):
                pass
            finally:
                up_writer.close()
            return
        await _answer(writer, 503, "text/plain", b"no worker of this edge answers\n")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 500: "Internal Error"}


async def _answer(
    writer: asyncio.StreamWriter, status: int, kind: str, body: bytes, length: int | None = None
) -> None:
    reason = _REASONS.get(status, "Service Unavailable")
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\n"
        f"content-length: {len(body) if length is None else length}\r\n"
        "connection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()
    if sink.can_write_eof():
        with contextlib.suppress(OSError):
            sink.write_eof()
