"""Per-endpoint metric series, by explicit opt-in (``metrics_endpoint_labels: N``).

An endpoint's name as a label multiplies every series it is on by the number of
endpoints, and agents choose names: left open, one agent could grow Prometheus without
bound. So the edge gives series of their own to the first N endpoint names bound since it
started, and no more; the compiled byte path counts them in fixed slots
(relay/_series.pxd) that the collector reads at scrape time. A name keeps its slot after
its endpoint is released, so a counter never goes back when the endpoint comes back;
endpoints past the cap are still in every per-kind total, and are counted as refused.
"""

from __future__ import annotations

from relay import _fastpath


class EndpointSeries:
    def __init__(self, limit: int) -> None:
        if not 0 <= limit <= _fastpath.MAX_ENDPOINT_SERIES:
            raise ValueError(f"metrics_endpoint_labels must be 0..{_fastpath.MAX_ENDPOINT_SERIES}")
        self.limit = limit
        #: Endpoint names (URLs) and kinds, in slot order: index i is slot i + 1.
        self.names: list[str] = []
        self.kinds: list[str] = []
        self._slots: dict[str, int] = {}
        #: Binds of a name that got no series because ``limit`` names already had one.
        self.refused = 0

    def slot_for(self, name: str, kind: str) -> int:
        """The slot of endpoint ``name`` (its URL), given on first sight while there is
        room; 0 when per-endpoint series are off or full."""
        slot = self._slots.get(name)
        if slot is not None:
            return slot
        if len(self.names) >= self.limit:
            if self.limit:
                self.refused += 1
            return 0
        self.names.append(name)
        self.kinds.append(kind)
        slot = len(self.names)
        self._slots[name] = slot
        return slot
