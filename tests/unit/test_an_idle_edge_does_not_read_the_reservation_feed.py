"""The credential watch's tick reads the reservation feed only while the edge (or worker)
has endpoints: an idle edge's workers and nodes would otherwise each ask the control
plane every second for nothing (relay/edge/live_reservations.py ``tick``). The first tick
with an endpoint live reads on from the old mark."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from relay.control.reserved import ReservationChanges
from relay.edge.live_reservations import LiveReservations
from relay.edge.registry import Holder
from relay.edge.tcp import TcpEndpoint


class Control:
    def __init__(self) -> None:
        self.asked: list[int | None] = []

    async def reservation_changes(self, after: int | None, limit: int) -> ReservationChanges:
        self.asked.append(after)
        return ReservationChanges(7)  # nothing changed since ``after``

    def forget_reservations(self) -> None:
        pass


def test_a_tick_asks_nothing_while_no_endpoint_is_live() -> None:
    control = Control()
    edge = SimpleNamespace(
        endpoints={}, control=control, cluster=None, worker=None, tokens={}, config=None
    )
    live = LiveReservations(edge)  # type: ignore[arg-type]
    live.mark = 3

    async def run() -> None:
        for _ in range(5):
            live.tick()
            await asyncio.sleep(0)
        assert control.asked == []
        endpoint = TcpEndpoint("ep_1", 20022, Holder("tok", "a_1", None), "127.0.0.1", None)
        edge.endpoints[endpoint.endpoint_id] = endpoint
        live.tick()
        task = live._reads.running
        assert task is not None
        await task

    asyncio.run(run())
    assert control.asked == [3]  # from the mark kept while idle
    assert live.mark == 7
