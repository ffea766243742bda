"""A store across a network is asked off the event loop (relay/control/store_thread.py)
and its audit events are queued (relay/control/audit_queue.py): a call that does not
come back is ControlUnavailable after its timeout, calls beyond the waiting bound are
refused at once, a call still queued when its wait ends never runs, and audit events are
written in order, kept while writes fail, and dropped oldest-first past their bound."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from sqlalchemy.exc import OperationalError

from relay.control import audit_queue, store_thread
from relay.control.audit_queue import AuditQueue, Event
from relay.control.store_thread import StoreCalls, StoreThread
from relay.errors import ControlUnavailable

pytestmark = pytest.mark.timeout(30)


def test_a_call_is_answered_from_the_stores_thread() -> None:
    async def scenario() -> None:
        thread = StoreThread(timeout=2)
        try:
            caller = threading.get_ident()
            where = await thread.call(threading.get_ident)
            assert where != caller
            assert thread.reachable and thread.waiting == 0
        finally:
            thread.close()

    asyncio.run(scenario())


def test_a_silent_store_is_unavailable_after_the_timeout_and_the_loop_runs_on() -> None:
    async def scenario() -> None:
        thread = StoreThread(timeout=0.3)
        release = threading.Event()
        ran: list[str] = []
        try:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.ensure_future(tick())
            started = time.monotonic()
            stuck = asyncio.ensure_future(thread.call(lambda: release.wait(10)))
            queued = asyncio.ensure_future(thread.call(lambda: ran.append("queued")))
            for call in (stuck, queued):
                with pytest.raises(ControlUnavailable) as raised:
                    await call
                assert raised.value.code == "RLY_504"
                assert "did not answer within 0.3 s" in str(raised.value)
            took = time.monotonic() - started
            assert 0.25 < took < 1.5, took
            assert ticks >= 15  # the loop kept running meanwhile
            assert not thread.reachable and "within 0.3 s" in thread.last_error
            ticker.cancel()
            release.set()
            # The queued call's wait ended before it ran: it never runs.
            await asyncio.sleep(0.2)
            assert ran == []
            assert await thread.call(lambda: "again") == "again"
            assert thread.reachable
        finally:
            release.set()
            thread.close()

    asyncio.run(scenario())


def test_a_call_given_a_longer_bound_waits_past_the_threads_own() -> None:
    """An audit verification reads the whole chain: it may take longer than a lookup."""

    async def scenario() -> None:
        thread = StoreThread(timeout=0.1)
        try:
            assert await thread.call(lambda: time.sleep(0.3) or "read", timeout=2) == "read"
            with pytest.raises(ControlUnavailable, match=r"within 0\.1 s"):
                await thread.call(lambda: time.sleep(0.3))
        finally:
            thread.close()

    asyncio.run(scenario())


class _SilentStore:
    """A store across a network whose ping waits until ``answering`` is set."""

    class engine:  # the path StoreCalls reads: store.engine.dialect.name
        class dialect:
            name = "postgresql"

    def __init__(self) -> None:
        self.answering = threading.Event()

    def ping(self) -> None:
        if not self.answering.wait(5):
            raise OperationalError("SELECT 1", {}, Exception("timeout expired"))


def test_readiness_fails_once_a_ping_waits_longer_than_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ping's own call bound is 5 s; readiness does not wait for it to run out."""
    monkeypatch.setattr(store_thread, "PING_EVERY", 0.05)
    monkeypatch.setattr(store_thread, "PING_WAIT", 0.2)

    async def scenario() -> None:
        store = _SilentStore()
        calls = StoreCalls(store)  # type: ignore[arg-type]
        calls.start(asyncio.get_running_loop())
        try:
            await asyncio.sleep(0.1)
            with pytest.raises(ConnectionError, match="has not answered a ping for"):
                for _ in range(20):  # bounded: 20 x 0.05 s
                    calls.ping()
                    await asyncio.sleep(0.05)
            store.answering.set()
            await asyncio.sleep(0.3)
            calls.ping()  # answered again: ready
        finally:
            store.answering.set()
            await calls.close()

    asyncio.run(scenario())


def test_calls_beyond_the_waiting_bound_are_refused_at_once() -> None:
    async def scenario() -> None:
        thread = StoreThread(timeout=1.0, max_waiting=3)
        release = threading.Event()
        try:
            waiting = [
                asyncio.ensure_future(thread.call(lambda: release.wait(5))) for _ in range(3)
            ]
            await asyncio.sleep(0.05)
            assert thread.waiting == 3
            started = time.monotonic()
            with pytest.raises(ControlUnavailable, match="3 calls unanswered"):
                await thread.call(lambda: None)
            assert time.monotonic() - started < 0.1
            release.set()
            await asyncio.gather(*waiting, return_exceptions=True)
            assert thread.waiting == 0
        finally:
            release.set()
            thread.close()

    asyncio.run(scenario())


def test_a_database_error_is_control_unavailable_on_one_line() -> None:
    def fails() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused\n\tIs it up?"))

    async def scenario() -> None:
        thread = StoreThread(timeout=2)
        try:
            with pytest.raises(ControlUnavailable) as raised:
                await thread.call(fails)
            assert str(raised.value) == "the store did not answer: connection refused Is it up?"
        finally:
            thread.close()

    asyncio.run(scenario())


class FlakyStore:
    """Takes events while ``up``, refuses them while not (a RelayError, as a store call
    that failed is)."""

    def __init__(self) -> None:
        self.up = True
        self.written: list[str] = []
        self.tries = 0

    async def send(self, batch: list[Event]) -> None:
        self.tries += 1
        if not self.up:
            raise ControlUnavailable("the store did not answer")
        self.written.extend(e["target"] for e in batch)


def test_audit_events_wait_while_writes_fail_and_are_written_in_order(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_queue, "RETRY_AFTER", 0.05)
    caplog.set_level(logging.INFO, logger="relay.control.for_edge")

    async def scenario() -> None:
        store = FlakyStore()
        queue = AuditQueue(store.send, batch=2, what="store")
        queue.start(asyncio.get_running_loop())
        try:
            queue.put("a", "x", "1", None)
            await queue.flush(2)
            assert store.written == ["1"]
            store.up = False
            for n in range(2, 7):
                queue.put("a", "x", str(n), {"n": n})
            await asyncio.sleep(0.3)
            assert store.written == ["1"] and len(queue) == 5 and store.tries > 3
            store.up = True
            await queue.flush(2)
            assert store.written == ["1", "2", "3", "4", "5", "6"] and len(queue) == 0
        finally:
            await queue.close()
        said = [r.getMessage() for r in caplog.records]
        assert sum("audit events wait" in m for m in said) == 1, said  # once per outage
        assert sum("written again" in m for m in said) == 1, said

    asyncio.run(scenario())


def test_past_the_bound_the_oldest_audit_events_are_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit_queue, "MAX_QUEUED_EVENTS", 4)

    async def scenario() -> None:
        store = FlakyStore()
        store.up = False
        queue = AuditQueue(store.send, batch=10, what="store")
        for n in range(7):
            queue.put("a", "x", str(n), None)
        assert len(queue) == 4 and queue.dropped == 3
        queue.start(asyncio.get_running_loop())
        store.up = True
        queue.put("a", "x", "7", None)  # wakes the writer
        await queue.flush(2)
        await queue.close()
        assert store.written == ["4", "5", "6", "7"]

    asyncio.run(scenario())
