"""A remote edge reuses the control plane's answer about a reservation for at most
RESERVATION_TTL, never longer, never keeps one fetched across a change it heard of
(forget_reservations), and never reuses anything about credentials. The control
plane here is a recorder of the requests RemoteControl makes (the HTTP side has its own
end-to-end test, tests/e2e/test_edge_with_remote_control_plane.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from relay.control import for_edge
from relay.control.for_edge import RemoteControl, Reservation

ACC_A = Reservation("acc_a", "eu")
ACC_B = Reservation("acc_b", "eu")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.owner: str | None = "acc_a"

    def post(self, path: str, *, json: Any = None) -> Any:
        self.calls.append(path)
        if path == "/edge/reservation_owner":
            return {"account_id": self.owner, "region": "eu"}
        if path == "/edge/reserved_ports":
            return {"ports": [20001]}
        if path == "/edge/inactive_tokens":
            return {"inactive": {}}
        raise AssertionError(path)


def test_reservation_answers_are_reused_within_the_ttl_and_asked_again_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(for_edge, "RESERVATION_TTL", 0.3)
    recorder = Recorder()
    control = RemoteControl(recorder)  # type: ignore[arg-type]

    async def run() -> None:
        assert await control.reservation_owner("http", "a.example.com") == ACC_A
        recorder.owner = "acc_b"  # released and taken by another account meanwhile
        assert await control.reservation_owner("http", "a.example.com") == ACC_A
        assert await control.reservation_owner("tcp", 20001) == ACC_B  # another key
        assert await control.reserved_ports() == {20001}
        assert await control.reserved_ports() == {20001}
        started = time.monotonic()
        await asyncio.sleep(0.35)
        assert await control.reservation_owner("http", "a.example.com") == ACC_B
        assert time.monotonic() - started < 5
        for _ in range(3):  # credentials: asked every time
            await control.inactive_tokens({"t1"})

    asyncio.run(run())
    assert recorder.calls == [
        "/edge/reservation_owner",
        "/edge/reservation_owner",
        "/edge/reserved_ports",
        "/edge/reservation_owner",
        "/edge/inactive_tokens",
        "/edge/inactive_tokens",
        "/edge/inactive_tokens",
    ]


class Held(Recorder):
    """A control plane whose answers wait until the test lets them go: a reservation is
    made (and read by the edge) while an answer is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()
        self.answer = threading.Event()

    def post(self, path: str, *, json: Any = None) -> Any:
        answer = super().post(path, json=json)  # decided now; arrives when let go
        self.asked.set()
        assert self.answer.wait(5), path
        return answer


def test_an_answer_fetched_across_a_forget_is_not_kept() -> None:
    """A bind asks; before the answer arrives a reservation commits and the edge's read
    of the change calls forget_reservations. The answer (which may predate the change)
    is returned to the bind that asked (it is checked again by its epoch) but not kept:
    the next ask, by a bind that began after the change, goes to the control plane."""
    held = Held()
    control = RemoteControl(held)  # type: ignore[arg-type]

    async def across_a_forget(ask: Any) -> Any:
        held.asked.clear()
        held.answer.clear()
        task = asyncio.ensure_future(ask())
        while not held.asked.is_set():
            await asyncio.sleep(0.005)
        control.forget_reservations()  # LiveReservations._read found a change
        held.owner = "acc_b"  # what the store says now
        held.answer.set()
        return await task

    async def run() -> None:
        stale = await across_a_forget(lambda: control.reservation_owner("http", "a.example.com"))
        assert stale == ACC_A  # answered before the change: the asking bind's own
        assert await control.reservation_owner("http", "a.example.com") == ACC_B
        assert await control.reservation_owner("http", "a.example.com") == ACC_B  # kept now
        assert await across_a_forget(control.reserved_ports) == {20001}
        assert await control.reserved_ports() == {20001}
        assert await control.reserved_ports() == {20001}

    asyncio.run(run())
    assert held.calls == [
        "/edge/reservation_owner",
        "/edge/reservation_owner",
        "/edge/reserved_ports",
        "/edge/reserved_ports",
    ]
