"""Cluster events sealed with a key only the cluster's nodes hold (sans-IO).

Nodes tell each other through Redis pub/sub to stop or restart a session, to reload, to
check credentials now (relay/cluster/presence.py). Anything that can ``PUBLISH`` on the
cluster's Redis could send those too. So each event goes sealed: an HMAC-SHA256 over the
channel it is sent on, the time it was sent, a random nonce and the event itself, under a
key every node derives from the cluster CA's private key (each node holds the CA, to
issue its own node certificate; nothing else does). A receiving node takes an event
only when its seal is right, it was sent on the channel it arrived on (a message meant
for one node is not replayed to all), it is at most ``MAX_AGE`` old by the node's clock
(or as far ahead of it: the nodes' clocks are assumed within that of each other, as
NTP keeps them), and its nonce was not seen before (a captured event is taken once).

Wire form: ``RS1 <ms since the epoch> <nonce, 32 hex> <seal, 64 hex> <event>``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["MAX_AGE", "EventSeal", "event_key"]

_MAGIC = b"RS1 "
#: How old (or how far ahead of this node's clock) an event may be.
MAX_AGE = 30.0
#: Nonces remembered at most (those of the last 2 * MAX_AGE): far above what a cluster
#: publishes in a minute. Past it an event is refused rather than taken unchecked, and
#: only a holder of the key can make events that count.
MAX_REMEMBERED = 65536
_NONCE_HEX = 32
_SEAL_HEX = 64


def event_key(ca_private_der: bytes) -> bytes:
    """The sealing key, from the cluster CA's private key (DER): the same on every node
    given the same CA, and not the CA key itself."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"relay cluster events v1"
    ).derive(ca_private_der)


class EventSeal:
    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock
        #: nonce -> when its event was sent (seconds): replays within MAX_AGE are refused.
        self._seen: dict[bytes, float] = {}
        #: Why the last :meth:`open` refused (for the log).
        self.refusal = ""

    def seal(self, channel: str, event: bytes) -> bytes:
        sent = b"%d" % int(self._clock() * 1000)
        nonce = os.urandom(_NONCE_HEX // 2).hex().encode()
        mac = self._mac(channel, sent, nonce, event)
        return b" ".join((_MAGIC.rstrip(), sent, nonce, mac, event))

    def open(self, channel: str, data: bytes) -> bytes | None:
        """The event of ``data`` received on ``channel``, or None (``refusal`` says why)."""
        if not data.startswith(_MAGIC):
            self.refusal = "not sealed"
            return None
        parts = data.split(b" ", 4)
        if len(parts) != 5:
            self.refusal = "malformed seal"
            return None
        _, sent, nonce, mac, event = parts
        if not sent.isdigit() or len(sent) > 16 or len(nonce) != _NONCE_HEX:
            self.refusal = "malformed seal"
            return None
        if len(mac) != _SEAL_HEX or not hmac.compare_digest(
            mac, self._mac(channel, sent, nonce, event)
        ):
            self.refusal = "wrong seal (another cluster's CA, or forged)"
            return None
        when = int(sent) / 1000
        now = self._clock()
        if abs(now - when) > MAX_AGE:
            self.refusal = f"sent more than {MAX_AGE:.0f} s before or after this node's clock"
            return None
        if nonce in self._seen:
            self.refusal = "replayed"
            return None
        self._forget_older_than(now - 2 * MAX_AGE)
        if len(self._seen) >= MAX_REMEMBERED:
            self.refusal = "too many events to remember"
            return None
        self._seen[nonce] = when
        return event

    def _mac(self, channel: str, sent: bytes, nonce: bytes, event: bytes) -> bytes:
        signed = b"\n".join((channel.encode(), sent, nonce, event))
        return hmac.new(self._key, signed, hashlib.sha256).hexdigest().encode()

    def _forget_older_than(self, oldest: float) -> None:
        # Only when the table grew: a quiet cluster does not walk it per event.
        if len(self._seen) < 1024:
            return
        self._seen = {n: t for n, t in self._seen.items() if t >= oldest}
