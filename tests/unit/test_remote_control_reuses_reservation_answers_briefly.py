"""A remote edge reuses the control plane's answer about a reservation for at most
RESERVATION_TTL, never longer, and never reuses anything about credentials. The control
plane here is a recorder of the requests RemoteControl makes (the HTTP side has its own
end-to-end test, tests/e2e/test_edge_with_remote_control_plane.py)."""

from __future__ import annotations

import asyncio
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
