"""Cluster presence: which edge node (PoP) holds which public name, shared through Redis.

A node that receives a visitor for a name another node holds forwards it there
(relay/cluster/nodelink.py); this module tells it which node and at which link address.
Every node keeps a local table of the other nodes' names, so :meth:`Presence.lookup` does
no I/O on the visitor's path, and an outage of Redis only freezes the table: the last
known names keep being served, and the node republishes its own entry as soon as Redis
answers again (a Redis restarted empty has the whole cluster back within a heartbeat).

Redis layout
------------
``relay:node:<node_id>``
    A string, JSON ``{"region": str, "link": "host:port", "version": str, "count": int}``,
    written with ``SET ... PX <ttl ms>`` on every heartbeat. ``version`` is a digest of
    the node's names. A node that dies stops refreshing it and it expires after ``ttl``:
    its names vanish from every table at the next heartbeat. :meth:`Presence.stop`
    deletes it at once.
``relay:names:<node_id>``
    The node's names, JSON ``[[family, hostname, kind, host_rewrite, owner, share], ...]``,
    written only when they change (soon after :meth:`Presence.changed`), its expiry
    renewed with ``PEXPIRE`` on every heartbeat. Readers fetch it only when the version
    in the node key is not the one they hold: a quiet cluster of nodes with 10,000
    names each rereads a few hundred bytes per node per heartbeat, not every name.
    (A node key with the names inline, ``"names": [...]``, is read too.) ``share`` says
    who else of the owner's token may bind the name too (:func:`may_share`): ``pool``
    when every member of the endpoint bound it with pooling, else ``agent:<agent id>``,
    the one agent whose links hold it. A name of five fields (a node of an older
    version) does not say, and is checked by its owner and its Host rewrite alone.
``relay:nodes``
    A sorted set of node ids, each scored with the time (ms) it last wrote its key:
    every node adds itself each heartbeat and removes itself at stop; readers read the
    newest ``MAX_NODES`` (live nodes are always among them) and drop registrations an
    hour old. It is how the nodes find each other's keys.
``relay:presence`` (channel)
    After each change of its names (and its delete) a node publishes its id here; every
    node subscribes and rereads that node's key on each message, and its names only if
    the key changed, so a new bind is visible cluster-wide within a round trip or two,
    not a heartbeat, and an announcement of a node that did not change (anyone may
    publish one) costs a few hundred bytes. A burst of them makes one read.
``relay:events`` (channel)
    Cluster-wide events: JSON objects of strings to strings (:meth:`Presence.publish_event`).
    Every subscriber gets each one, the publishing node included, as Redis delivers them.
``relay:to:<node_id>`` (channel)
    Events for one node only (:meth:`Presence.publish_to`): the answers to what it asked
    the others (relay/edge/cluster_asks.py), which no other node needs to read.
``relay:claim:<hostname>``
    The owner tag that holds the name cluster-wide (relay/cluster/name_claims.py): claimed
    by :meth:`Presence.claim` before a bind, refreshed with the node key, released when
    the node no longer holds the name.

Each heartbeat a node also rereads the key of every node registered or in its table
(``ZREVRANGE relay:nodes``, then ``MGET``; never a walk of the keyspace, whose claim keys,
one per name, outnumber the nodes by far) and rebuilds its table from them: that
catches pub/sub messages lost while a connection was down, and keys that expired.
Names are fetched (``MGET`` of ``relay:names:*``) only for node keys whose bytes changed,
so a quiet cluster costs one ``MGET`` of small values.

What another node wrote is checked before it is used: a key or an event longer than its
byte cap, or that would parse into more JSON values than its item caps allow (counted
before it is parsed: ``[[],[],...]`` costs ~20 times its bytes), is not parsed; a key that
is not JSON, has the wrong shape, more than ``MAX_NAMES`` names, a name longer than 253
characters or a share that is not ``pool`` or ``agent:`` and an agent id (1 to 64 visible
ASCII characters) is left out of the table (logged once, at debug level, per distinct
value), never trusted.

The family of a name is ``http`` for the plain-HTTP port, ``sni`` for the TLS port (https
and tls endpoints) and ``tcp`` for a TCP endpoint, named by its port number: a visitor's
port says which one to look up. When two other
nodes hold the same name, :meth:`Presence.lookup` prefers one of this node's region, then
one the caller does not ask it to avoid, then the smallest node id, so that every node
of a region forwards the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from relay.cluster.event_seal import EventSeal
from relay.cluster.name_claims import NameClaims
from relay.cluster.own_key import OwnKey
from relay.errors import ConfigError, RelayError

log = logging.getLogger("relay.cluster.presence")

NODE_PREFIX = "relay:node:"
NAMES_PREFIX = "relay:names:"
NODES_KEY = "relay:nodes"
PRESENCE_CHANNEL = "relay:presence"
EVENTS_CHANNEL = "relay:events"
DIRECT_PREFIX = "relay:to:"

#: Bound on every Redis call: socket connect and read timeouts, and a deadline for the
#: whole call (a read timeout is per read, and a call may read more than once).
CALL_TIMEOUT = 1.0
CALL_DEADLINE = 3.0
#: Connections to Redis at most: the subscriber's, the heartbeat's, and binds' claims.
MAX_CONNECTIONS = 16
#: Claims in flight at once: a storm of binds (agents admitted together, Redis far
#: away) waits for a slot here, and leaves the other connections to the subscriber,
#: the heartbeat and publishes, which would otherwise time out waiting for the pool
#: and take Redis for unreachable (the subscriber torn down, events lost).
CLAIM_SLOTS = MAX_CONNECTIONS - 4
#: How long :meth:`Presence.stop` tries to delete this node's key.
STOP_TIMEOUT = 1.0
#: Stopping the loops: how many times to cancel them, how long to wait after each.
CANCEL_ROUNDS = 50
CANCEL_WAIT = 0.1
#: After ``changed()``, how long to wait for more changes before writing once for all.
COALESCE = 0.02
#: What a node entry may hold; more is garbage (or an attack on every node's memory).
MAX_NAMES = 100_000
MAX_HOSTNAME = 253
MAX_FIELD = 300
MAX_NODE_ID = 200
#: Bytes of a node key, and of a names key (MAX_NAMES names of at most about 650
#: bytes each, a share of up to 70 included), read before any parsing: anything longer
#: is garbage.
MAX_NODE_KEY = 4096
MAX_NAMES_KEY = 64 * 1024 * 1024
#: Bytes of a pub/sub event: Redis itself cuts off a subscriber that falls 32 MiB
#: behind (``client-output-buffer-limit pubsub``), so no larger one can arrive whole.
#: (One is that big only for a long string: an answer listing a node's sessions.)
MAX_EVENT = 32 * 1024 * 1024
#: A sealed event's bytes at most: the event's, and the seal's header.
MAX_SEALED = MAX_EVENT + 256
#: Fields of an event: relay's have under ten.
MAX_EVENT_FIELDS = 64
#: Node ids read from the registry per heartbeat, and how long a node that stopped
#: writing stays registered (its key expired long before).
MAX_NODES = 10_000
FORGET_REGISTRATION_MS = 3600 * 1000
MGET_CHUNK = 500
#: Messages handled before the nodes they announce are read (one MGET of their keys):
#: a flood of events does not hold back the reads.
MAX_DRAINED = MGET_CHUNK

FAMILIES = frozenset({"http", "sni", "tcp"})
KINDS = frozenset({"http", "https", "tls", "tcp"})
#: A name's ``share`` (:func:`may_share`): pooled by all its members, or one agent's.
SHARE_POOL = "pool"
SHARE_AGENT = "agent:"
#: An agent id, as relay/edge/session.py AGENT_ID_RE checks it at authentication (this
#: floor imports nothing of the edge; a unit test keeps the two the same): 1 to 64
#: visible ASCII characters.
AGENT_ID_RE = re.compile(r"[!-~]{1,64}")

#: What may go wrong talking to Redis: the node carries on with its last table.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

T = TypeVar("T")


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    region: str
    #: ``host:port`` of the node's inter-node link listener (``[v6]:port`` for IPv6).
    link: str


@dataclass(frozen=True)
class RemoteName:
    #: ``http`` (plain-HTTP names) or ``sni`` (names of the TLS port: https and tls).
    family: str
    #: An exact name or a ``*.suffix`` wildcard.
    hostname: str
    kind: str
    #: ``""`` when none.
    host_rewrite: str
    node: NodeInfo
    #: Who holds it, as an opaque tag (relay/edge/cluster.py: a digest of the token id):
    #: a name has one owner across the cluster, so another owner's bind is refused.
    owner: str = ""
    #: How the owner's other agents may share it (:func:`may_share`); ``""``: not said
    #: (a node of an older version), and only the owner and the rewrite are compared.
    share: str = ""


def share_of(pooled: bool, agent_id: str) -> str:
    """What a node publishes as an endpoint's ``share``: ``pool`` when every live
    member bound it with pooling (``pooled``), else ``agent:`` and ``agent_id``, the
    agent whose links hold it."""
    return SHARE_POOL if pooled else SHARE_AGENT + agent_id


def may_share(share: str, agent_id: str, pooled: bool) -> bool:
    """Whether an agent (``agent_id``, binding with pooling or not) of the owner's token
    may bind a name another node holds with ``share``: the rule of one edge
    (relay/edge/members.py ``admit``) and of the workers (relay/cluster/claims.py),
    with the other node's members summed up by its ``share`` — it joins a pool when it
    pools too, and the links of one agent share the name wherever they are. A member
    that pools and one that does not never share (one edge refuses that as well)."""
    if share == "":
        return True  # not said (a node of an older version): the owner alone decides
    if share == SHARE_POOL:
        return pooled
    return share == SHARE_AGENT + agent_id


def _is_share(value: object) -> bool:
    """``pool`` or ``agent:<agent id>``, nothing else."""
    if not isinstance(value, str):
        return False
    if value == SHARE_POOL:
        return True
    return value.startswith(SHARE_AGENT) and (
        AGENT_ID_RE.fullmatch(value[len(SHARE_AGENT) :]) is not None
    )


#: One name this node holds live: (family, hostname, kind, host_rewrite, owner, share);
#: without ``share`` (five fields) it does not say how the name may be shared.
Name = tuple[str, str, str, str, str, str] | tuple[str, str, str, str, str]
#: The names this node holds live now.
Names = Callable[[], Iterable[Name]]


@dataclass
class _Entry:
    """One other node as its key last read: what it is, and the table keys it holds."""

    info: NodeInfo
    keys: list[tuple[str, str]]


class Presence:
    """This node's presence in the cluster, and its table of the others'.

    The background task runs two loops: the heartbeat (write this node's key, reread all
    keys) and the subscriber (pub/sub). Neither gives up: on a Redis error it marks the
    node disconnected, keeps the table and tries again a heartbeat later. Call
    :meth:`changed` and the lookups from the event loop's thread.
    """

    def __init__(
        self,
        url: str,
        me: NodeInfo,
        names: Names,
        *,
        heartbeat: float = 1.0,
        ttl: float = 5.0,
        on_event: Callable[[dict[str, str]], None] | None = None,
        owned: Callable[[], dict[str, str]] | None = None,
        on_table: Callable[[], None] | None = None,
        seal: EventSeal | None = None,
    ) -> None:
        """``seal``: events go sealed and only sealed ones are taken
        (relay/cluster/event_seal.py); None: plain (a cluster of one test)."""
        if not heartbeat > 0 or not ttl > heartbeat:
            raise ConfigError(
                f"cluster presence: need 0 < heartbeat < ttl (heartbeat {heartbeat}, ttl {ttl})"
            )
        self._url = url
        self._me = me
        self._names = names
        self._heartbeat = heartbeat
        self._ttl_ms = max(1, round(ttl * 1000))
        self._on_event = on_event
        self._seal = seal
        #: Why events were refused, each logged once (anyone who can PUBLISH sends them).
        self._refusals_logged: set[str] = set()
        #: Called after the table changed (the other nodes' names).
        self._on_table = on_table
        #: hostname -> owner tag of every name this node keeps, serving or not (one kept
        #: for its agent's return keeps its claim); by default the names it serves.
        self._owned = owned
        self._key = NODE_PREFIX + me.node_id
        #: This node's key, marked as this process's, and who else writes it.
        self._own = OwnKey(me.node_id)
        self._set_get = True  # Redis 6.2+: SET ... GET (off after a Redis that refuses it)
        self._names_key = NAMES_PREFIX + me.node_id
        #: The version of this node's names last written to Redis (None: write them).
        self._written: str | None = None
        self._direct = DIRECT_PREFIX + me.node_id
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        #: Set by changed() and by a fresh subscription: the heartbeat loop goes now.
        self._wake = asyncio.Event()
        self._dirty = True
        self._full_now = False
        #: Reads from Redis are applied in the order they were made (a heartbeat's MGET
        #: must not overwrite what a later pub/sub GET applied).
        self._lock = asyncio.Lock()
        self._connected = False
        self._outage_logged = False
        self._last_error = "not connected yet"
        self._nodes: dict[str, _Entry] = {}
        #: node id -> the bytes of its key last applied (garbage included: parsed once).
        self._raw: dict[str, bytes] = {}
        #: When each other node's key was last read (the loop's clock): a full reread
        #: that misses a key forgets its node only once the key would have expired,
        #: because a Redis restarted empty misses every key until each node writes again.
        self._seen: dict[str, float] = {}
        #: (family, hostname) -> node id -> the name as that node holds it.
        self._table: dict[tuple[str, str], dict[str, RemoteName]] = {}
        #: (family, hostname) -> how many lookups of a name several nodes hold were
        #: answered: the next one goes to the next of those nodes (pooled agents, or one
        #: agent's links to two PoPs, share the visitors of nodes that hold none).
        self._turns: dict[tuple[str, str], int] = {}
        self._count = 0
        self._table_news = False
        self._claims: NameClaims | None = None
        #: hostname -> owner tag: the claims this node holds in Redis.
        self._claimed: dict[str, str] = {}
        #: (hostname, owner) -> binds that claimed it and have not settled: their names
        #: are not in ``owned`` yet, and a write meanwhile must keep (refresh) the claim,
        #: not release it, or another token could claim the name while the bind ends.
        self._pending: Counter[tuple[str, str]] = Counter()
        self._claim_slots = asyncio.Semaphore(CLAIM_SLOTS)
        #: Names held here that another owner claims (bound on both sides of an outage).
        self._conflicts: dict[str, str] = {}
        self._refused_event_logged = False

    # -- the edge's interface ---------------------------------------------------------

    async def start(self) -> None:
        """Start the background task. Redis need not be up: the task keeps trying."""
        if self._task is not None:
            return
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                # Many binds at once (agents admitted together) each claim a name: they
                # queue for a connection (for at most a call's timeout) rather than
                # open one each.
                max_connections=MAX_CONNECTIONS,
                timeout=CALL_TIMEOUT,
                socket_timeout=CALL_TIMEOUT,
                socket_connect_timeout=CALL_TIMEOUT,
                # Our loops retry, a heartbeat apart; redis-py's own retries would hold
                # one call for seconds with Redis down.
                retry=Retry(NoBackoff(), 0),
            )
            self._client = aioredis.Redis(connection_pool=pool)
        except ValueError as err:
            raise ConfigError(f"cluster presence: bad Redis URL: {err}") from err
        self._claims = NameClaims(self._client, self._ttl_ms, self._call)
        self._task = asyncio.create_task(self._run(), name=f"presence {self._me.node_id}")

    async def stop(self) -> None:
        """Stop the task, delete this node's key (others drop its names at once rather
        than after ttl; best effort, bounded) and close the client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await client.delete(self._key, self._names_key)
                await client.zrem(NODES_KEY, self._me.node_id)
                await client.publish(PRESENCE_CHANNEL, self._me.node_id)
                mine = {h: o for h, o in self._claimed.items() if not self._held_elsewhere(h, o)}
                if self._claims is not None and mine:
                    await self._claims.release(mine)
                    self._claimed = {}
        except REDIS_ERRORS as err:
            log.debug("cluster presence: could not delete %s on stop: %s", self._key, err)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()
                await client.connection_pool.aclose()

    def changed(self) -> None:
        """This node's names changed: write them soon (changes within ``COALESCE`` make
        one write), not on the next heartbeat. While Redis is down the next heartbeat
        writes them."""
        self._dirty = True
        self._wake.set()

    async def claim(self, hostname: str, owner: str) -> str | None:
        """Claim ``hostname`` for ``owner`` cluster-wide before binding it: None when it
        is this owner's now, else the owner tag that holds it. Raises
        :class:`RelayError` when Redis cannot answer (the caller decides). After a None
        the caller must call :meth:`settle` once its bind has ended, held or not: until
        then the claim is kept; after, a claim whose bind failed is released by the next
        write (or expires)."""
        claims = self._claims
        if claims is None:
            raise RelayError("cluster presence is not started")
        host = hostname.lower()
        try:
            async with asyncio.timeout(CALL_DEADLINE):
                await self._claim_slots.acquire()
        except TimeoutError:
            # Busy here, not a Redis failure: Redis is not taken for unreachable.
            raise RelayError(f"cluster presence: too many claims at once to claim {host}") from None
        try:
            refused = await claims.claim({host: owner})
        except REDIS_ERRORS as err:
            self._failed(err)
            raise RelayError(f"cluster presence: cannot claim {host}: {err}") from err
        finally:
            self._claim_slots.release()
        self._ok()
        if host in refused:
            return refused[host]
        self._claimed[host] = owner
        self._pending[(host, owner)] += 1
        return None

    def settle(self, hostname: str, owner: str) -> None:
        """A bind that :meth:`claim` let go ahead has ended (its name is in ``owned`` now,
        or the bind failed)."""
        key = (hostname.lower(), owner)
        if self._pending[key] > 1:
            self._pending[key] -= 1
        else:
            self._pending.pop(key, None)

    def lookup(
        self,
        family: str,
        hostname: str,
        avoid: Callable[[NodeInfo], bool] | None = None,
        *,
        rotate: bool = False,
    ) -> RemoteName | None:
        """Which other node holds ``hostname`` on the ``family`` front: the exact name,
        else the wildcard with the longest suffix (``*.a.example.com`` before
        ``*.example.com``; a wildcard covers one label or more). No I/O. Of several
        holders, those of this region come first, and within a region one ``avoid`` says
        no to comes last (a node that cannot be reached: its key outlives it by up to
        ``ttl``, while its agents bind again elsewhere). Among the best, ``rotate``
        lookups take turns (round robin: one per visitor sent on); others get the first
        by node id."""
        host = hostname.lower()
        if len(host) > MAX_HOSTNAME:
            return None
        key = (family, host)
        holders = self._table.get(key)
        if holders:
            return self._pick(holders, avoid, key if rotate else None)
        rest = host
        while True:
            _, dot, rest = rest.partition(".")
            if not dot or not rest:
                return None
            key = (family, "*." + rest)
            holders = self._table.get(key)
            if holders:
                return self._pick(holders, avoid, key if rotate else None)

    def holders(self, family: str, hostname: str) -> list[RemoteName]:
        """Every other node's hold of exactly ``hostname`` (a wildcard as itself) on the
        ``family`` front, by node id. No I/O."""
        holders = self._table.get((family, hostname.lower()), {})
        return [holders[node_id] for node_id in sorted(holders)]

    def held(self, family: str) -> dict[str, RemoteName]:
        """Every name of ``family`` other nodes hold, each with the holder a lookup
        would pick."""
        return {
            host: self._pick(holders, None)
            for (fam, host), holders in self._table.items()
            if fam == family and holders
        }

    def nodes(self) -> list[NodeInfo]:
        """The other live nodes this node knows of, by id."""
        return [self._nodes[node_id].info for node_id in sorted(self._nodes)]

    async def publish_event(self, event: dict[str, str]) -> None:
        """Send ``event`` to every node's ``on_event`` (this one's too). Raises
        :class:`RelayError` when Redis cannot take it: the caller decides whether it
        matters."""
        await self._publish(EVENTS_CHANNEL, event)

    async def publish_to(self, node_id: str, event: dict[str, str]) -> None:
        """Send ``event`` to ``node_id``'s ``on_event`` only (as :meth:`publish_event`)."""
        await self._publish(DIRECT_PREFIX + node_id, event)

    async def _publish(self, channel: str, event: dict[str, str]) -> None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in event.items()):
            raise TypeError("cluster events map strings to strings")
        client = self._client
        if client is None:
            raise RelayError("cluster presence is not started")
        try:
            data = json.dumps(event).encode()
            if self._seal is not None:
                data = self._seal.seal(channel, data)
            await self._call(client.publish(channel, data))
        except REDIS_ERRORS as err:
            self._failed(err)
            raise RelayError(f"cluster presence: cannot publish an event: {err}") from err
        self._ok()

    @property
    def connected(self) -> bool:
        """Whether the last Redis operation succeeded."""
        return self._connected

    @property
    def node_id_conflicts(self) -> int:
        """Writes of this node's key that found another process had written it since."""
        return self._own.conflicts

    def status(self) -> dict[str, Any]:
        return {
            "redis": "connected" if self._connected else "unreachable",
            "nodes": len(self._nodes),
            "remote_names": self._count,
            "claims": len(self._claimed),
            "claim_conflicts": sorted(self._conflicts),
            "node_id_conflicts": self._own.conflicts,
            "node_id_shared_with": dict(self._own.other),
            "last_error": self._last_error,
        }

    # -- the background task ----------------------------------------------------------

    async def _run(self) -> None:
        loops = [
            asyncio.create_task(self._heartbeats(), name=f"presence {self._me.node_id} beat"),
            asyncio.create_task(self._subscriber(), name=f"presence {self._me.node_id} sub"),
        ]
        try:
            await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_until_done(loops)

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        full_at = 0.0  # when the next full beat (write and reread everything) is due
        while True:
            self._wake.clear()
            full = self._full_now or loop.time() >= full_at
            self._full_now = False
            if await self._beat(full):
                if full:
                    full_at = loop.time() + self._heartbeat
                try:
                    async with asyncio.timeout(max(0.0, full_at - loop.time())):
                        await self._wake.wait()
                    await asyncio.sleep(COALESCE)
                except TimeoutError:
                    pass
            else:
                full_at = 0.0
                await asyncio.sleep(self._heartbeat)

    async def _beat(self, full: bool) -> bool:
        """Write this node's key if due, and on a full beat reread every node's."""
        try:
            if full or self._dirty:
                self._dirty = False
                await self._write()
            if full:
                await self._refresh()
        except REDIS_ERRORS as err:
            self._dirty = True
            self._failed(err)
            return False
        except Exception:
            # A bug (or names() failing) must not end presence: log it, try again later.
            log.exception("cluster presence: heartbeat failed")
            self._dirty = True
            return False
        self._ok()
        return True

    async def _write(self) -> None:
        """This node's keys: the names only when they changed (or the key is gone: a
        Redis restarted empty), the node key every time; a change is announced."""
        client = self._need_client()
        names = sorted({tuple(str(field) for field in name) for name in self._names()})
        blob = json.dumps(names, separators=(",", ":")).encode()
        version = hashlib.sha256(blob).hexdigest()[:16]
        fresh = version != self._written
        if not fresh:
            # 0: the key is gone (Redis restarted empty, or it expired in an outage).
            fresh = not await self._call(client.pexpire(self._names_key, self._ttl_ms))
        if fresh:
            await self._call(client.set(self._names_key, blob, px=self._ttl_ms))
        me = self._me
        value = self._own.value(
            {"region": me.region, "link": me.link, "version": version, "count": len(names)}
        )
        await self._set_own(client, value)
        try:
            await self._call(client.zadd(NODES_KEY, {self._me.node_id: time.time() * 1000}))
        except ResponseError as err:  # not a sorted set: see _refresh
            log.debug("cluster presence: cannot register in %s: %s", NODES_KEY, err)
        self._written = version
        if fresh:
            await self._call(client.publish(PRESENCE_CHANNEL, self._me.node_id))
        if self._owned is not None:
            held = {h.lower(): o for h, o in self._owned().items()}
        else:
            held = {name[1].lower(): name[4] for name in names}
        for host, owner in self._pending:
            held.setdefault(host, owner)  # a bind in flight: its claim is kept
        await self._keep_claims(held)

    async def _set_own(self, client: aioredis.Redis, value: bytes) -> None:
        """Write this node's key, and say so when another live process wrote it since
        this one's last write (relay/cluster/own_key.py)."""
        if not self._set_get:
            await self._call(client.set(self._key, value, px=self._ttl_ms))
            return
        try:
            old = await self._call(client.set(self._key, value, px=self._ttl_ms, get=True))
        except ResponseError as err:
            message = str(err)
            if message.startswith("WRONGTYPE"):
                # Garbage at the key (not a string): a plain SET replaces it.
                await self._call(client.set(self._key, value, px=self._ttl_ms))
                return
            if "syntax error" not in message.lower():
                raise  # READONLY in a failover, OOM, …: this beat fails, the next tries
            # A Redis before 6.2 has no SET ... GET: written without the check from now on.
            self._set_get = False
            log.warning(
                "cluster presence: this Redis cannot SET ... GET (%s): a node id shared by "
                "two PoPs will not be noticed",
                err,
            )
            await self._call(client.set(self._key, value, px=self._ttl_ms))
            return
        said = self._own.written(value, None if isinstance(old, bool) else old)
        if said is not None:
            log.error("cluster presence: %s", said)

    async def _keep_claims(self, held: dict[str, str]) -> None:
        """Refresh the claims of the names held, release the others'. A name another
        owner claims was bound on both sides of a Redis outage (each node checked only
        its last table): it is logged, once, and served here as it was."""
        assert self._claims is not None
        # Taken with ``held``, before any await: a claim made while this write waits is
        # for a bind not in ``held`` yet, and is not this write's to release.
        gone = {
            h: o
            for h, o in self._claimed.items()
            if held.get(h) != o and not self._held_elsewhere(h, o)
        }
        refused = await self._claims.claim(held)
        if gone:
            await self._claims.release(gone)
        for host, owner in gone.items():
            if self._claimed.get(host) == owner:
                del self._claimed[host]
        for host, owner in held.items():
            if host in refused:
                if self._conflicts.get(host) != refused[host]:
                    log.warning(
                        "cluster presence: %s is held here but claimed by another owner "
                        "(bound on two nodes while Redis was unreachable)",
                        host,
                    )
                self._claimed.pop(host, None)
            else:
                self._claimed[host] = owner
        self._conflicts = {h: refused[h] for h in held if h in refused}

    def _held_elsewhere(self, claim_key: str, owner: str) -> bool:
        """Whether another node holds ``claim_key`` (a hostname, or ``tcp:<port>``) for
        ``owner``: links and pool members of one token on several nodes share a claim,
        and one of them leaving must not release it under the others (the next
        heartbeat of one would claim it again, but another token could claim it first)."""
        if claim_key.startswith("tcp:"):
            keys = [("tcp", claim_key[4:])]
        else:
            keys = [("http", claim_key), ("sni", claim_key)]
        return any(
            name.owner == owner for key in keys for name in self._table.get(key, {}).values()
        )

    async def _refresh(self) -> None:
        """Reread the key of every node registered or in the table, and make the table
        say what they say: one MGET per heartbeat for a quiet cluster, whatever else
        Redis holds (its claim keys, one per name, are many)."""
        client = self._need_client()
        # A registration older than this is a node gone for good (its key long expired):
        # dropped, by this node's clock (the writer's, hence a generous bound).
        oldest = time.time() * 1000 - FORGET_REGISTRATION_MS
        try:
            # Newest first: live nodes register again every heartbeat, so when more ids
            # than MAX_NODES are registered (ids churned within the hour, or junk), those
            # left out are the ones that stopped writing, not the live ones.
            got: Any = await self._call(
                client.zrevrange(NODES_KEY, 0, MAX_NODES - 1, withscores=True)
            )
            registered: list[tuple[bytes, float]] = [(m, float(sc)) for m, sc in got]
            # Stale ids may lie beyond what was read: drop them by score, all at once
            # (only when some could be there, not on every heartbeat).
            if len(registered) >= MAX_NODES or any(sc < oldest for _, sc in registered):
                await self._call(client.zremrangebyscore(NODES_KEY, "-inf", f"({oldest}"))
        except ResponseError as err:
            # Not a sorted set (garbage): nodes are still found through the table and
            # their announcements, and the key is left to whoever wrote it.
            log.debug("cluster presence: cannot read %s: %s", NODES_KEY, err)
            registered = []
        async with self._lock:
            known = {
                _text(_bytes(m), MAX_NODE_ID) for m, score in registered if score >= oldest
            } | set(self._raw)
            ids = sorted(n for n in known if n and n != self._me.node_id)
            values: list[bytes | str | None] = []
            for i in range(0, len(ids), MGET_CHUNK):
                chunk = [NODE_PREFIX + node_id for node_id in ids[i : i + MGET_CHUNK]]
                values.extend(await self._call(client.mget(chunk)))
            names = await self._read_names(ids, values)
            now = asyncio.get_running_loop().time()
            expired = now - self._ttl_ms / 1000
            for node_id, raw in zip(ids, values, strict=True):
                if raw is not None:
                    self._seen[node_id] = now
                    self._apply(node_id, raw, names.get(node_id))
                elif self._seen.get(node_id, expired) <= expired:
                    # Gone, and not just missing from a Redis restarted empty (each node
                    # writes its key again within a heartbeat of that).
                    self._seen.pop(node_id, None)
                    self._apply(node_id, None, None)

    async def _read_names(
        self, ids: list[str], values: list[bytes | str | None]
    ) -> dict[str, bytes | str | None]:
        """The names keys of the nodes of ``ids`` whose node key (``values``, as just
        read) is not the one applied: an unchanged node's names are not downloaded."""
        client = self._need_client()
        changed = [
            node_id
            for node_id, raw in zip(ids, values, strict=True)
            if raw is not None and _bytes(raw) != self._raw.get(node_id)
        ]
        names: dict[str, bytes | str | None] = {}
        for i in range(0, len(changed), MGET_CHUNK):
            part = changed[i : i + MGET_CHUNK]
            got = await self._call(client.mget([NAMES_PREFIX + n for n in part]))
            names.update(zip(part, got, strict=True))
        return names

    async def _subscriber(self) -> None:
        """Follow the channels; subscribe again (a heartbeat after a failure) for ever."""
        while True:
            pubsub = None
            try:
                pubsub = self._need_client().pubsub(ignore_subscribe_messages=True)
                await self._call(pubsub.subscribe(PRESENCE_CHANNEL, EVENTS_CHANNEL, self._direct))
                self._ok()
                # Messages may have been lost before: the heartbeat rereads everything.
                self._full_now = True
                self._wake.set()
                await self._listen(pubsub)
            except REDIS_ERRORS as err:
                self._failed(err)
            except Exception:
                log.exception("cluster presence: subscriber failed")
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._heartbeat)

    async def _listen(self, pubsub: PubSub) -> None:
        """Handle messages until the connection fails. A connection that says nothing
        for a heartbeat is pinged; one that then stays silent for another is dead (a
        Redis gone without closing it), and that is a failure too."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged_at: float | None = None
        while True:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=self._heartbeat
            )
            now = loop.time()
            # None is also what a message redis-py swallowed (a subscribe reply) gives,
            # at once: only the clock says the connection was quiet.
            if message is None:
                if pinged_at is not None:
                    if now - pinged_at >= self._heartbeat:
                        raise TimeoutError("no answer on the pub/sub connection")
                elif now - heard >= self._heartbeat:
                    await self._call(pubsub.ping())
                    pinged_at = now
                continue
            heard, pinged_at = now, None
            # Announcements are read after the messages already here are handled: those
            # that came while the last read was in flight (a burst, every node
            # republishing after a Redis restart) make one read, each node once.
            announced: dict[str, None] = {}
            for _ in range(MAX_DRAINED):
                self._message(message, announced)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
                if message is None:
                    break
            else:
                self._message(message, announced)
            if announced:
                await self._nodes_changed(list(announced))

    def _message(self, message: dict[str, Any], announced: dict[str, None]) -> None:
        """Handle an event now; add the node an announcement names to ``announced``."""
        if message.get("type") == "pong":
            self._ok()
            return
        channel, data = message.get("channel"), message.get("data")
        if not isinstance(data, bytes):
            return
        if channel == PRESENCE_CHANNEL.encode():
            node_id = _text(data, MAX_NODE_ID)
            if node_id and node_id != self._me.node_id:
                announced[node_id] = None
        elif channel in (EVENTS_CHANNEL.encode(), self._direct.encode()):
            self._event(data, channel.decode())

    async def _nodes_changed(self, node_ids: list[str]) -> None:
        """Read the announced nodes' keys; their names only for a node key that is not
        the one applied. An announcement is only a hint (anyone can PUBLISH one), and
        one for a node that did not change (every node republishes after a Redis
        restart) costs its node key, a few hundred bytes, not its names."""
        client = self._need_client()
        async with self._lock:
            # MGET, not GET: a key of another type reads as missing, not as an error.
            values = await self._call(client.mget([NODE_PREFIX + n for n in node_ids]))
            # Read after the node keys: a names key of a later version than its node key
            # names is not taken (_parse), and the write that made it announces again.
            names = await self._read_names(node_ids, values)
            now = asyncio.get_running_loop().time()
            for node_id, raw in zip(node_ids, values, strict=True):
                if raw is not None:
                    self._seen[node_id] = now
                else:
                    self._seen.pop(node_id, None)
                self._apply(node_id, raw, names.get(node_id))

    def _event(self, data: bytes, channel: str = EVENTS_CHANNEL) -> None:
        if self._seal is not None:
            # Bounded before the seal is computed over it, as before it is parsed.
            opened = self._seal.open(channel, data) if len(data) <= MAX_SEALED else None
            if opened is None:
                why = self._seal.refusal if len(data) <= MAX_SEALED else "too long"
                if why not in self._refusals_logged:
                    self._refusals_logged.add(why)
                    log.warning("cluster presence: ignoring an event: %s (said once)", why)
                return
            data = opened
        if not _fits(data, MAX_EVENT, 1 + 2 * MAX_EVENT_FIELDS):
            # Not parsed at all (see _fits). Said once: anyone who can PUBLISH can send
            # these as fast as Redis delivers them.
            if not self._refused_event_logged:
                self._refused_event_logged = True
                log.warning(
                    "cluster presence: ignoring an event of %d bytes: more than %d fields "
                    "or %d bytes (said once)",
                    len(data),
                    MAX_EVENT_FIELDS,
                    MAX_EVENT,
                )
            return
        event = _loads(data)
        if not isinstance(event, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in event.items()
        ):
            log.debug("cluster presence: ignoring a malformed event (%d bytes)", len(data))
            return
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("cluster presence: on_event failed")

    # -- the table --------------------------------------------------------------------

    def _apply(self, node_id: str, raw: bytes | str | None, names_raw: bytes | str | None) -> None:
        """Make the table say what ``node_id``'s keys say (``raw`` None: it has no key;
        ``names_raw``: its names key, read with or after ``raw``)."""
        if raw is None:
            self._raw.pop(node_id, None)
            if node_id in self._nodes:
                self._forget(node_id)
                self._table_changed()
            return
        raw = _bytes(raw)
        if self._raw.get(node_id) == raw:
            return
        try:
            parsed = _parse(node_id, raw, None if names_raw is None else _bytes(names_raw))
        except Exception:
            # _parse refuses what it does not expect; should it raise all the same, one
            # node's bad key must not end the reread of every other's (or the subscriber).
            log.exception("cluster presence: cannot read %s%s", NODE_PREFIX, node_id)
            parsed = None
        if parsed is _NAMES_MISSING:
            # Its names key is not there (yet): keep what the table says, read again.
            return
        self._raw[node_id] = raw
        self._forget(node_id)
        self._table_changed()
        if parsed is None:
            log.debug("cluster presence: ignoring %s%s: not a node entry", NODE_PREFIX, node_id)
            return
        info, names = parsed
        keys = []
        for name in names:
            key = (name.family, name.hostname)
            holders = self._table.setdefault(key, {})
            if node_id not in holders:
                keys.append(key)
                self._count += 1
            holders[node_id] = name
        self._nodes[node_id] = _Entry(info, keys)

    def _table_changed(self) -> None:
        """Tell ``on_table`` once the current batch of changes is applied."""
        if self._on_table is not None and not self._table_news:
            self._table_news = True
            asyncio.get_running_loop().call_soon(self._tell_table)

    def _tell_table(self) -> None:
        self._table_news = False
        if self._on_table is not None:
            try:
                self._on_table()
            except Exception:
                log.exception("cluster presence: on_table failed")

    def _forget(self, node_id: str) -> None:
        entry = self._nodes.pop(node_id, None)
        if entry is None:
            return
        for key in entry.keys:
            holders = self._table.get(key)
            if holders is not None and holders.pop(node_id, None) is not None:
                self._count -= 1
                if len(holders) < 2:
                    self._turns.pop(key, None)
                if not holders:
                    del self._table[key]

    def _pick(
        self,
        holders: dict[str, RemoteName],
        avoid: Callable[[NodeInfo], bool] | None,
        turn_key: tuple[str, str] | None = None,
    ) -> RemoteName:
        """The holder a visitor goes to. With ``turn_key``, successive picks rotate over
        the holders that rank first; without, the first by node id (a stable answer
        for listings, which must not use up turns)."""
        if len(holders) == 1:
            return next(iter(holders.values()))

        def rank(n: RemoteName) -> tuple[bool, bool]:
            # This region first, reachable or not: no visitor is ever carried to another
            # region, so a holder there only says "refused here" (421), which is wrong
            # while a node of this region holds the name and is briefly unreachable (its
            # visitors get 503 RLY_611 from the dial instead).
            return (n.node.region != self._me.region, avoid is not None and avoid(n.node))

        ordered = sorted(holders.values(), key=lambda n: (rank(n), n.node.node_id))
        best = rank(ordered[0])
        tied = [n for n in ordered if rank(n) == best]
        if turn_key is None or len(tied) == 1:
            return tied[0]
        turn = self._turns.get(turn_key, -1) + 1
        self._turns[turn_key] = turn % len(tied)
        return tied[turn % len(tied)]

    # -- plumbing ---------------------------------------------------------------------

    def _need_client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("cluster presence is not started")
        return self._client

    async def _call(self, call: Awaitable[T]) -> T:
        async with asyncio.timeout(CALL_DEADLINE):
            return await call

    def _ok(self) -> None:
        if not self._connected:
            if self._outage_logged:
                log.info("cluster presence: Redis is reachable again")
            self._connected = True
            self._outage_logged = False
            self._last_error = ""

    def _failed(self, err: BaseException) -> None:
        self._connected = False
        self._last_error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "cluster presence: Redis unreachable (%s); keeping the last table of %d "
                "nodes, retrying every %gs",
                self._last_error,
                len(self._nodes),
                self._heartbeat,
            )


async def _cancel_until_done(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again as long as needed (bounded).

    Once is not always enough on Python 3.11: ``asyncio.wait_for`` (which redis-py
    uses to send) drops a cancellation that arrives as its operation completes, and the
    loop would go on as if nothing happened. An outer cancellation while this waits
    (a second ``stop()``) does not cut it short: the loops must not outlive their client.
    """
    for _ in range(CANCEL_ROUNDS):
        pending = [task for task in tasks if not task.done()]
        if not pending:
            break
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(pending, timeout=CANCEL_WAIT)
    else:
        log.error("cluster presence: a loop ignored %d cancellations", CANCEL_ROUNDS)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("cluster presence: a loop failed", exc_info=task.exception())


def _text(data: bytes, limit: int) -> str | None:
    if len(data) > limit:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


#: What :func:`_parse` says when a node key names a version whose names are not there.
_NAMES_MISSING: Any = object()


def _parse(
    node_id: str, raw: bytes, names_raw: bytes | None
) -> tuple[NodeInfo, list[RemoteName]] | None:
    """A node entry, checked field by field; None if anything is off. Its names come
    from the names key only when that key is the version the node key names (the two are
    read by separate calls, and a node may write both in between)."""
    # A value per byte at most: the byte cap of a node key bounds it well enough.
    doc = _json(raw, MAX_NODE_KEY, MAX_NODE_KEY)
    if not isinstance(doc, dict):
        return None
    region, link, names, version = (
        doc.get("region"),
        doc.get("link"),
        doc.get("names"),
        doc.get("version"),
    )
    if not (_short_str(region) and _short_str(link) and _is_link(link)):
        return None
    if names is None and _short_str(version):
        if names_raw is None or not _is_version(names_raw, version):
            return _NAMES_MISSING  # type: ignore[no-any-return]
        names = _json(names_raw, MAX_NAMES_KEY, _names_values())
    if not isinstance(names, list) or len(names) > MAX_NAMES:
        return None
    info = NodeInfo(node_id, region, link)
    out = []
    for item in names:
        # Six fields; five from a node of an older version, which says no share.
        if not (isinstance(item, list) and len(item) in (5, 6)):
            return None
        family, hostname, kind, rewrite, owner = item[:5]
        share = item[5] if len(item) == 6 else ""
        if len(item) == 6 and not _is_share(share):
            return None
        if not (isinstance(family, str) and isinstance(kind, str)):
            return None
        if family not in FAMILIES or kind not in KINDS or (family == "tcp") != (kind == "tcp"):
            return None
        if family == "tcp":
            if not (isinstance(hostname, str) and _is_port(hostname)):
                return None
        elif not (isinstance(hostname, str) and _is_hostname(hostname)):
            return None
        if not all(isinstance(v, str) and len(v) <= MAX_FIELD for v in (rewrite, owner)):
            return None
        out.append(RemoteName(family, hostname.lower(), kind, rewrite, info, owner, share))
    return info, out


def _names_values() -> int:
    """JSON values in a names key of ``MAX_NAMES`` names: the list, and each name's list
    and its six strings."""
    return 1 + 7 * MAX_NAMES


def _is_version(names_raw: bytes, version: str) -> bool:
    """Whether ``names_raw`` is the names blob ``version`` (its digest's prefix) names."""
    return hashlib.sha256(names_raw).hexdigest()[: len(version)] == version


def _json(data: bytes, limit: int, values: int) -> Any:
    """``data`` as JSON, or None when it is longer than ``limit`` bytes, would make more
    than ``values`` JSON values (:func:`_fits`), is not JSON, or is nested too deep for
    the parser (RecursionError, not a ValueError)."""
    return _loads(data) if _fits(data, limit, values) else None


def _loads(data: bytes) -> Any:
    """``data`` as JSON, or None. Check it with :func:`_fits` first."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


#: A JSON string once its escaped quotes and backslashes are gone (:func:`_unescaped`).
_STRING = re.compile(rb'"[^"]*"')
#: What precedes every JSON value but the first: an array's or object's first element or
#: key, the next one, an object's value.
_BEFORE_VALUE = (b"[", b"{", b",", b":")


def _fits(data: bytes, limit: int, values: int) -> bool:
    """Whether ``data`` is at most ``limit`` bytes and ``json.loads`` would make at most
    ``values`` values of it (containers, strings, numbers, keys), checked before it is
    parsed. The bytes alone do not bound the parse: ``[[],[],...]`` is three bytes per
    list and some 64 bytes of Python objects each, and a payload within its byte cap
    would cost every node that reads it ~20 times its size before its item count is
    checked. Bounded in values, a payload costs what the item caps allow, whatever its
    shape.

    Every value but the first follows one of ``[ { , :``, so they bound the count. Those
    in strings (an answer event's body is JSON in a string; a host rewrite has a port)
    are counted only when the plain count is over: then the strings, each a value with
    two quotes, are counted, and only when they are few enough are they cut out to count
    the rest; with copies no larger than ``data``, and no parse."""
    if len(data) > limit:
        return False
    if _values_at_most(data) <= values:
        return True
    plain = _unescaped(data)
    if plain.count(b'"') > 2 * values:
        return False
    return _values_at_most(_STRING.sub(b"", plain)) <= values


def _values_at_most(data: bytes) -> int:
    return 1 + sum(data.count(c) for c in _BEFORE_VALUE)


def _unescaped(data: bytes) -> bytes:
    """``data`` without its escaped backslashes, then its escaped quotes (a run of
    backslashes pairs up from its start, as the parser reads it): every quote left opens
    or closes a string. Up to where the parser would stop (the end, or the first error)
    this is exact; past it, bytes the parser never reads only add to the counts."""
    if b"\\" in data:
        data = data.replace(b"\\\\", b"")
    if b'\\"' in data:
        data = data.replace(b'\\"', b"")
    return data


def _is_port(text: str) -> bool:
    """A TCP port's name: its number, in decimal, 1..65535."""
    return (
        text.isascii()
        and text.isdigit()
        and len(text) <= 5
        and 1 <= int(text) <= 65535
        and text[0] != "0"
    )


def _short_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_FIELD


def _is_hostname(name: str) -> bool:
    if not 0 < len(name) <= MAX_HOSTNAME:
        return False
    rest = name[2:] if name.startswith("*.") else name
    return bool(rest) and "*" not in rest


def _is_link(link: str) -> bool:
    """``host:port`` or ``[v6]:port``: what the link dialler can split."""
    host, colon, port = link.rpartition(":")
    if not colon or not host or not (port.isascii() and port.isdigit()):
        return False
    if not 0 < int(port) < 65536:
        return False
    if host.startswith("[") or host.endswith("]"):
        return host.startswith("[") and host.endswith("]") and len(host) > 2
    return ":" not in host
