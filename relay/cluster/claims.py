"""The supervisor's table: which worker holds which endpoint (sans-IO).

Every bind asks here first, so two workers never give one name or port to two owners —
the rules a single edge's registry keeps (relay/edge/registry.py), across workers:

* a key nobody holds goes to whoever asks;
* a key held under another token is refused, and so is a name whose other front (http
  or the TLS port) another token holds;
* the same agent instance asking again (its reconnect landed on another worker) takes
  the key over: the old worker drops its copy;
* another agent of the same token takes it only once no worker holds it live (the
  owner's agent was restarted and its endpoint is orphaned within its grace).

``live`` marks whether a holder's session is up: visitors are handed only to workers
that hold a key live.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Claim:
    token: str
    agent: str
    #: worker -> whether its session for the key is live (False: orphaned, in grace).
    holders: dict[int, bool] = field(default_factory=dict)

    def live_workers(self) -> list[int]:
        return sorted(w for w, live in self.holders.items() if live)


@dataclass(frozen=True)
class Verdict:
    granted: bool
    why: str = ""
    #: Workers that held the key before and must drop it now.
    dropped: tuple[int, ...] = ()


class ClaimTable:
    def __init__(self) -> None:
        self._claims: dict[str, Claim] = {}

    def claim(self, worker: int, key: str, token: str, agent: str) -> Verdict:
        sibling = self._claims.get(_sibling(key))
        if sibling is not None and sibling.token != token:
            # A name has one owner across http and the TLS port (https, tls).
            return Verdict(False, f"{key.partition(':')[2]} is bound by another token")
        current = self._claims.get(key)
        if current is None:
            self._claims[key] = Claim(token, agent, {worker: True})
            return Verdict(True)
        if current.token != token:
            return Verdict(False, f"{key} is bound by another token")
        others = tuple(sorted(w for w in current.holders if w != worker))
        if current.agent != agent and any(
            live for w, live in current.holders.items() if w != worker
        ):
            return Verdict(False, f"{key} is bound by another agent session")
        self._claims[key] = Claim(token, agent, {worker: True})
        return Verdict(True, dropped=others)

    def set_live(self, worker: int, key: str, live: bool) -> bool:
        """A holder's session ended (orphaned) or came back; True if ``worker`` holds
        ``key`` and its state changed."""
        current = self._claims.get(key)
        if current is None or worker not in current.holders:
            return False
        if current.holders[worker] == live:
            return False
        current.holders[worker] = live
        return True

    def release(self, worker: int, key: str) -> bool:
        """``worker`` no longer holds ``key``; True if it did."""
        current = self._claims.get(key)
        if current is None or worker not in current.holders:
            return False
        del current.holders[worker]
        if not current.holders:
            del self._claims[key]
        return True

    def worker_gone(self, worker: int) -> list[str]:
        """Every key ``worker`` held is released (it died): the keys that changed."""
        changed = [key for key, claim in self._claims.items() if worker in claim.holders]
        for key in changed:
            self.release(worker, key)
        return changed

    def live_workers(self, key: str) -> list[int]:
        current = self._claims.get(key)
        return current.live_workers() if current is not None else []

    def held_keys(self) -> list[str]:
        return list(self._claims)

    def holders(self, key: str) -> dict[int, bool]:
        current = self._claims.get(key)
        return dict(current.holders) if current is not None else {}


def _sibling(key: str) -> str:
    """The same name on the other front: ``http:n`` ↔ ``sni:n`` (tcp ports have none)."""
    family, _, name = key.partition(":")
    return {"http": "sni:", "sni": "http:"}.get(family, "-:") + name
