"""The cluster broker: presence and cross-node routing in Redis (redis-py, asyncio).

Every hub node of a cluster talks to one Redis server. Redis holds who is online
where, and carries items from the node that stored a message to the nodes that hold
the recipient's sessions. Nothing is ever *only* in Redis: a message is committed to
the store (PostgreSQL) before it is routed, so whatever Redis loses, the store
replays (see "Losing routed items" below).

Data model (every key starts with the prefix, ``duplex:`` unless the URL says
``?prefix=...``)::

    {P}nodes            hash   node -> deadline (ms, on Redis's clock)
    {P}u:{user}         hash   "{node}\\0{session}" -> SessionInfo (MessagePack)
    {P}ns:{node}        set    "{user}\\0{session}": the node's own index
    {P}route:{node}     channel (pub/sub): items for the sessions on that node

Liveness: one deadline per node, not per session
    A session entry counts only while its node's deadline in ``{P}nodes`` lies in
    the future. Each node pushes its deadline to ``now + ttl`` on every heartbeat
    (:meth:`RedisBroker.refresh`, called by the hub every ``heartbeat`` seconds), and
    ``ttl`` is the hub's ``grace``: a node that dies stops counting within the grace,
    the same promise the hub makes for one silent connection, with ``grace -
    heartbeat`` of slack for a slow refresh. A session that ends normally, or whose
    connection goes silent, is withdrawn by its node at once (``session_down``), so
    the only way an entry can outlive its session is that its node died -- and then
    the node's deadline lapses for all of its sessions together.

    Why not a TTL per session? It tells nothing more about what the hub can observe,
    and it costs a great deal more: re-arming 50,000 sessions' TTLs (pipelined
    ``PEXPIRE``) took 0.6 s and 0.5 s of the node's CPU here, every heartbeat, where the
    per-node deadline is one command (0.2 ms). Time is always Redis's own (``TIME``
    inside the scripts), so hosts need no clock sync.

    A node that stalls past its deadline (a stop-the-world pause, a partition) finds
    its deadline expired at its next refresh and publishes all its sessions again.

``sessions(user)``: one round trip
    A Lua script reads the user's hash and the deadline of each node named in it and
    returns the values of the live entries (``HGETALL`` plus one ``HGET`` per distinct
    node: O(sessions of the user)). Calls made in the same event-loop turn are sent as
    one pipeline (see "Batching"), so the hub's per-message lookup costs about one
    round trip shared by everything sent at the same moment.

``session_up`` / ``session_down``: first and last, atomically
    Each is one Lua script that changes the hash and the node's index and, in the same
    atomic step, says whether another *live* session of the user exists. Two nodes
    logging the same user in at once therefore cannot both see "first" (or, logging out,
    both "last"): Redis runs scripts one at a time.

Clean-up of dead nodes
    A dead node's entries are invisible at once (its deadline lapsed), and are deleted
    by whichever node refreshes next: the refresh script pops up to
    :data:`PURGE_BATCH` members of the dead node's index, deletes their entries, and
    drops the node once its index is empty. A node that starts under an id that was
    used before purges what that earlier incarnation left first.

Offline because a node died
    A user whose last session was on the dead node went offline without a
    ``session_down``, and the dead node cannot tell anyone. The refresh that purges
    that entry returns the user, and that node's hub tells the user's watchers: within
    the grace plus one heartbeat of the death. Said once: whoever says a user is
    offline (this purge, or a clean ``session_down`` of a last live session on
    another node) deletes the user's other dead entries in the same script, so no
    later purge finds one to say it again.

Routing: one channel per node, pub/sub
    An item for a session on node N is published on ``{P}route:N``; each node
    subscribes to its own channel only, so the number of subscriptions is the number of
    nodes, not of users. Items for the same node queued in the same turn go as one
    message (a MessagePack list), to save work on both ends. Pub/sub was chosen over
    streams: a stream would let a node resume after a reconnect, but it must be
    trimmed, it is lost in a Redis restart without AOF too, and the store already
    holds every entry in order -- so losing an item is handled once, by the store, for
    every cause.

Losing routed items, and how nothing stays lost
    Pub/sub drops what is published while a subscriber is reconnecting, and a node
    whose Redis is unreachable cannot publish at all. Three rules make the store's
    replay cover every case:

    1. A session receives its entries strictly in sequence (the hub's cursor): an
       entry after a gap sends the session to the store for the gap.
    2. After every (re)subscription this node tells its hub to *resync* all its local
       sessions (a ``Routed(kind="resync")`` with no user): each one re-reads the
       store from its cursor, so the last entry of a burst cannot be stranded.
    3. While Redis is unreachable, this node remembers the users it could not look up
       or route to; once Redis is back it sends a resync to the nodes that hold their
       sessions (above :data:`MISSED_LIMIT` users, to every node).

Outages: degraded, never stuck
    On the first failed command the broker turns *degraded*: it answers from its own
    node's sessions (a user whose sessions are all elsewhere looks offline, so a
    message to him is reported ``stored``, which it is), drops routed items (rule 3
    recovers them), and a background task reconnects with a capped, jittered backoff.
    Back in touch, it reloads its scripts, retries the withdrawals that failed,
    publishes all its sessions again (Redis may have restarted empty), re-arms its
    deadline, subscribes, and resyncs (rules 2 and 3). Presence pushes made while
    degraded are best effort, from the local view. Only :meth:`RedisBroker.start`
    raises :class:`~duplex.errors.BrokerError` (Redis unreachable at start, a bad URL),
    so that a misconfigured hub stops at once.

Batching
    Commands go through one queue (bounded by :data:`MAX_QUEUED`) and are sent as
    pipelines of up to :data:`MAX_BATCH` commands, one pipeline in flight at a time,
    so their order is kept (routed entries to a node arrive in the order they were
    stored). Measured here (redis-py with hiredis, uvloop, local Redis):
    ``sessions()`` alone takes 120 us (87 us of CPU); issued 100 at a time, as a busy
    hub does, 23 us each (17 us of CPU).

Deployment: a standalone Redis (or a primary with replicas); not Redis Cluster, whose
key slots the scripts do not respect. Put it on a private network with AUTH/TLS
(``rediss://``): session entries carry the sessions' ticket keys.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from typing import Any, Final, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from duplex.broker.base import Routed, RoutedHandler, SessionInfo
from duplex.errors import BrokerError, ConfigError

__all__ = ["MAX_BATCH", "MAX_QUEUED", "MISSED_LIMIT", "PURGE_BATCH", "RedisBroker"]

log = logging.getLogger("duplex.broker")

MAX_QUEUED: Final = 16_384
"""Commands waiting for Redis at most; callers beyond it wait for room."""

MAX_BATCH: Final = 512
"""Commands sent in one pipeline at most (a bigger batch waits for the next)."""

MISSED_LIMIT: Final = 10_000
"""Users remembered for a resync after an outage; beyond it, every node resyncs all."""

PURGE_BATCH: Final = 1_000
"""Entries of dead nodes deleted per refresh, at most (keeps each script short)."""

REPUBLISH_BATCH: Final = 500
"""Sessions re-published per pipeline after a reconnect."""

BACKOFF: Final = (0.05, 2.0)
"""First and longest wait, in seconds, between attempts to reach Redis again."""

DEFAULT_PREFIX: Final = "duplex:"

# -- Lua ------------------------------------------------------------------------------
# Every script computes "now" from Redis's clock, and treats an entry as live while
# the deadline of the node in its field (the part before the NUL) is not past.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = {}
local function live(nodes, field)
  local node = string.sub(field, 1, string.find(field, '\\0', 1, true) - 1)
  local ok = alive[node]
  if ok == nil then
    local d = redis.call('HGET', nodes, node)
    ok = d and tonumber(d) >= now or false
    alive[node] = ok
  end
  return ok
end
"""

# The user's hash has no live entry left: then its dead entries go too, since the
# caller says the user is offline, and a later purge must not say it again.
_LAST_GONE = """
local function last_gone(hash, nodes)
  local rest = redis.call('HKEYS', hash)
  for _, f in ipairs(rest) do
    if live(nodes, f) then return false end
  end
  if #rest > 0 then redis.call('HDEL', hash, unpack(rest)) end
  return true
end
"""

# KEYS: user hash, nodes. Returns the values of the live entries.
_SESSIONS = (
    _PRELUDE
    + """
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if live(KEYS[2], all[i]) then out[#out + 1] = all[i + 1] end
end
return out
"""
)

# KEYS: user hash, nodes, node index. ARGV: field, value, index member.
# Returns 1 when no other live session of the user exists (the user comes online).
_SESSION_UP = (
    _PRELUDE
    + """
local first = 1
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f ~= ARGV[1] and live(KEYS[2], f) then first = 0 break end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return first
"""
)

# KEYS: user hash, nodes, node index. ARGV: field, index member.
# Returns 1 when the entry existed and no other live session remains (user offline).
_SESSION_DOWN = (
    _PRELUDE
    + _LAST_GONE
    + """
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
return last_gone(KEYS[1], KEYS[2]) and 1 or 0
"""
)

# KEYS: nodes. ARGV: node, ttl (ms), prefix, purge limit.
# Re-arms this node's deadline, then deletes up to the limit entries of nodes whose
# deadline has passed (their index tells which). Returns {was alive (0/1), entries
# purged, user...}: the users whose purged entry was their last session. Nobody said
# they went offline (their node died), so the caller does. Whoever says it (here, or
# _SESSION_DOWN) also deletes the user's other dead entries, so it is said once.
_REFRESH = (
    _PRELUDE
    + _LAST_GONE
    + """
local prev = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
local budget = tonumber(ARGV[4])
local purged = 0
local offline = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if budget <= 0 then break end
  local node, deadline = all[i], tonumber(all[i + 1])
  if node ~= ARGV[1] and deadline < now then
    local index = ARGV[3] .. 'ns:' .. node
    for _, member in ipairs(redis.call('SPOP', index, budget)) do
      local sep = string.find(member, '\\0', 1, true)
      local user = string.sub(member, 1, sep - 1)
      local session = string.sub(member, sep + 1)
      local hash = ARGV[3] .. 'u:' .. user
      if redis.call('HDEL', hash, node .. '\\0' .. session) == 1 and last_gone(hash, KEYS[1]) then
        offline[#offline + 1] = user
      end
      purged = purged + 1
      budget = budget - 1
    end
    if redis.call('SCARD', index) == 0 then redis.call('HDEL', KEYS[1], node) end
  end
end
local out = {prev >= now and 1 or 0, purged}
for _, user in ipairs(offline) do out[#out + 1] = user end
return out
"""
)

# KEYS: node index. ARGV: node, prefix, limit. Deletes up to limit entries of this
# node (a new incarnation clearing the old one's, or a node withdrawing all at close);
# returns how many are left.
_PURGE_NODE = """
for _, member in ipairs(redis.call('SPOP', KEYS[1], tonumber(ARGV[3]))) do
  local sep = string.find(member, '\\0', 1, true)
  local user = string.sub(member, 1, sep - 1)
  redis.call('HDEL', ARGV[2] .. 'u:' .. user, ARGV[1] .. '\\0' .. string.sub(member, sep + 1))
end
return redis.call('SCARD', KEYS[1])
"""

_SCRIPTS: Final = {
    "sessions": _SESSIONS,
    "up": _SESSION_UP,
    "down": _SESSION_DOWN,
    "refresh": _REFRESH,
    "purge": _PURGE_NODE,
}

# -- encoding -------------------------------------------------------------------------

_InfoTuple = tuple[str, str, str, str, tuple[str, ...], str, int, bytes]
_encode = msgspec.msgpack.Encoder().encode
_decode_info = msgspec.msgpack.Decoder(_InfoTuple).decode
_decode_items = msgspec.msgpack.Decoder(list[tuple[str, str, Any, str]]).decode


def _pack_info(info: SessionInfo) -> bytes:
    return _encode(
        (info.session, info.user, info.device, info.node, info.endpoints, info.fingerprint,
         info.since, info.ticket_key)
    )  # fmt: skip


def _unpack_info(data: bytes) -> SessionInfo:
    return SessionInfo(*_decode_info(data))


def _split_url(url: str) -> tuple[str, str]:
    """Returns (the URL for redis-py, our key prefix); ``prefix`` is ours, not redis-py's."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    rest = []
    for name, value in query:
        if name == "prefix":
            prefix = value
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


class _Call:
    __slots__ = ("args", "future", "users")

    def __init__(
        self, args: tuple[Any, ...], future: asyncio.Future[Any] | None, users: tuple[str, ...] = ()
    ) -> None:
        self.args = args
        self.future = future
        self.users = users  # of the items of a PUBLISH: resynced if it fails


class RedisBroker:
    """The :class:`~duplex.broker.base.Broker` on Redis (read the module doc).

    Use it from one event loop, the one that awaited :meth:`start`.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://...`` or
            ``unix:///path?db=0``; ``?prefix=name:`` puts every key and channel under
            that prefix (default ``duplex:``), so clusters (or tests) can share a server.
        node: this node's id: unique among the live nodes, without NUL characters.
        ttl: seconds a node's sessions keep counting after its last refresh: the hub
            passes its ``grace`` (and refreshes every ``heartbeat``, which is shorter).
        timeout: seconds a Redis command may take before Redis counts as unreachable.

    Raises:
        ConfigError: a bad URL, node id or ttl.
    """

    def __init__(self, url: str, node: str, *, ttl: float = 15.0, timeout: float = 2.0) -> None:
        if not node or "\0" in node:
            raise ConfigError(f"a broker node id must be non-empty and without NUL: {node!r}")
        if ttl <= 0:
            raise ConfigError(f"the broker's ttl must be positive, not {ttl!r}")
        self.node = node
        self.url, self.prefix = _split_url(url)
        self.ttl_ms = int(ttl * 1000)
        self.timeout = timeout
        self._nodes_key = f"{self.prefix}nodes"
        self._index_key = f"{self.prefix}ns:{node}"
        self._channel = f"{self.prefix}route:{node}".encode()
        try:
            # Commands: few connections (one pipeline in flight, plus the recovery),
            # no retries inside redis-py: a failure turns the broker degraded instead.
            self._redis = aredis.Redis.from_url(
                self.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), max_connections=8, health_check_interval=0,
            )  # fmt: skip
            # The subscription waits for messages for as long as there are none, so
            # it must have no read timeout; a dead server shows as EOF or reset, a
            # hung one through the commands' timeout (which restarts everything).
            self._sub_redis = aredis.Redis.from_url(
                self.url, socket_timeout=None, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), socket_keepalive=True,
            )  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {url!r}: {exc}") from exc
        self._sha: dict[str, str] = {}
        self._on_routed: RoutedHandler | None = None
        # Our own sessions: re-published after an outage, and the degraded answers.
        self._mine: dict[str, SessionInfo] = {}
        self._mine_by_user: dict[str, dict[str, SessionInfo]] = {}
        self._failed_downs: dict[str, SessionInfo] = {}
        self._missed: set[str] = set()
        self._missed_all = False
        self._degraded = False
        self._closing = False
        self._closed = False
        self._queue: collections.deque[_Call] = collections.deque()
        self._room: asyncio.Semaphore | None = None
        self._wakeup: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._route_buffer: dict[str, list[tuple[str, str, Any, str]]] = {}
        self.outages = 0
        """Times Redis became unreachable since :meth:`start`."""
        self.dropped = 0
        """Routed items dropped while degraded (recovered by resyncs)."""

    def __repr__(self) -> str:
        return f"RedisBroker(node={self.node!r}, prefix={self.prefix!r})"

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable (answers come from this node alone)."""
        return self._degraded

    # -- life cycle -----------------------------------------------------------------

    async def start(self, on_routed: RoutedHandler) -> None:
        """Connects, clears what an earlier node of the same id left, arms this node's
        deadline, subscribes to its channel, and starts the batching task.

        Raises:
            BrokerError: Redis is unreachable or refuses us.
        """
        self._on_routed = on_routed
        self._room = asyncio.Semaphore(MAX_QUEUED)
        self._wakeup = asyncio.Event()
        try:
            await self._prepare()
            await self._purge_own()
            await self._refresh_deadline()
            await self._subscribe()
        except (RedisError, OSError) as exc:
            await self._close_clients()
            raise BrokerError(f"Redis at {self.url} is unreachable: {exc}") from exc
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_loop(), name="duplex-redis-flusher"
        )

    async def close(self) -> None:
        """Sends what is queued, withdraws this node's sessions, and disconnects."""
        if self._closing:
            return
        self._closing = True  # no recovery from now on
        for task in (self._recovery, self._subscriber):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._flusher is not None:
            # Send what is queued (routes of the last moments): a PING queued behind
            # it is answered once everything before it was sent; but not forever.
            self._flush_routes()
            with contextlib.suppress(BrokerError, TimeoutError):
                await asyncio.wait_for(self._call("PING"), self.timeout)
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
        self._closed = True
        if not self._degraded:
            with contextlib.suppress(RedisError, OSError):
                await self._purge_own()
                await self._redis.hdel(self._nodes_key, self.node)
        self._fail_queue(BrokerError("the broker is closed"))
        await self._close_clients()

    async def _close_clients(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        for client in (self._redis, self._sub_redis):
            with contextlib.suppress(Exception):
                await client.aclose()
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect()

    async def _prepare(self) -> None:
        for name, source in _SCRIPTS.items():
            self._sha[name] = str(await self._redis.script_load(source))

    async def _purge_own(self) -> None:
        while await self._redis.evalsha(
            self._sha["purge"], 1, self._index_key, self.node, self.prefix, PURGE_BATCH
        ):
            pass

    async def _refresh_deadline(self) -> bool:
        was_alive, _ = await self._redis.evalsha(
            self._sha["refresh"], 1, self._nodes_key, self.node, self.ttl_ms, self.prefix, 0
        )
        return bool(was_alive)

    async def _subscribe(self) -> None:
        pubsub = self._sub_redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
        except BaseException:
            with contextlib.suppress(Exception):
                # Typed in some redis releases and not in others: no ignore fits both.
                await cast(Any, pubsub).aclose()
            raise
        self._pubsub = pubsub
        self._subscriber = asyncio.get_running_loop().create_task(
            self._read_loop(pubsub), name="duplex-redis-subscriber"
        )

    # -- presence ---------------------------------------------------------------------

    def _keys(self, info: SessionInfo) -> tuple[str, bytes, bytes]:
        return (
            f"{self.prefix}u:{info.user}",
            f"{info.node}\0{info.session}".encode(),
            f"{info.user}\0{info.session}".encode(),
        )

    def _remember(self, info: SessionInfo) -> bool:
        """Adds ``info`` to our own sessions; True when the user had none here."""
        self._mine[info.session] = info
        sessions = self._mine_by_user.setdefault(info.user, {})
        first = not sessions
        sessions[info.session] = info
        return first

    def _forget(self, info: SessionInfo) -> bool:
        """Removes ``info`` from our own sessions; True when it was the user's last here."""
        self._mine.pop(info.session, None)
        sessions = self._mine_by_user.get(info.user)
        if sessions is None or sessions.pop(info.session, None) is None:
            return False
        if sessions:
            return False
        del self._mine_by_user[info.user]
        return True

    async def session_up(self, info: SessionInfo) -> bool:
        """Publishes a session; True when the user had no other live session anywhere.

        While Redis is unreachable the answer is this node's view, and the session is
        published once Redis is back.
        """
        first_here = self._remember(info)
        self._failed_downs.pop(info.session, None)
        if self._degraded:
            return first_here
        user_key, field, member = self._keys(info)
        try:
            first = await self._call(
                "EVALSHA", self._sha["up"], 3, user_key, self._nodes_key, self._index_key,
                field, _pack_info(info), member,
            )  # fmt: skip
        except BrokerError:
            return first_here
        return bool(first)

    async def session_down(self, info: SessionInfo) -> bool:
        """Withdraws a session; True when it was the user's last live one anywhere."""
        last_here = self._forget(info)
        if self._degraded:
            self._failed_downs[info.session] = info
            return last_here
        user_key, field, member = self._keys(info)
        try:
            last = await self._call(
                "EVALSHA", self._sha["down"], 3, user_key, self._nodes_key, self._index_key,
                field, member,
            )  # fmt: skip
        except BrokerError:
            self._failed_downs[info.session] = info
            return last_here
        return bool(last)

    async def refresh(self, sessions: list[SessionInfo]) -> list[str]:
        """Re-arms this node's deadline (the hub calls it every heartbeat) and purges a
        share of dead nodes' entries. If the deadline had lapsed (a stall longer than the
        ttl, or Redis restarted), publishes ``sessions`` again.

        Returns:
            The users whose last session was on a dead node and has just been purged:
            offline now, and nobody has said so (their node could not). Each such
            change is returned by one refresh of one node.
        """
        if self._degraded:
            return []
        try:
            was_alive, purged, *offline = await self._call(
                "EVALSHA", self._sha["refresh"], 1, self._nodes_key, self.node, self.ttl_ms,
                self.prefix, PURGE_BATCH,
            )  # fmt: skip
        except BrokerError:
            return []
        if purged:
            log.info(
                "purged %d sessions of dead nodes (%d users now offline)", purged, len(offline)
            )
        if not was_alive:
            log.warning("node %s had lapsed in Redis: publishing its sessions again", self.node)
            for info in sessions:
                self._remember(info)
            self._spawn_recovery()
        return [u.decode() if isinstance(u, bytes) else str(u) for u in offline]

    async def sessions(self, user: str) -> list[SessionInfo]:
        """Returns the live sessions of ``user`` on every node (one round trip).

        While Redis is unreachable: this node's sessions of ``user`` only, and ``user``
        is remembered for a resync once Redis is back.
        """
        if not self._degraded:
            try:
                values = await self._call(
                    "EVALSHA", self._sha["sessions"], 2, f"{self.prefix}u:{user}", self._nodes_key
                )
            except BrokerError:
                pass
            else:
                return [_unpack_info(v) for v in values]
        self._miss(user)
        return list(self._mine_by_user.get(user, {}).values())

    # -- routing ----------------------------------------------------------------------

    async def route(self, node: str, item: Routed) -> None:
        """Queues ``item`` for ``node``'s channel and returns (best effort: see the
        module doc for what the store does about a lost item)."""
        if self._degraded:
            self.dropped += 1
            self._miss(item.user)
            return
        buffer = self._route_buffer.get(node)
        if buffer is None:
            buffer = self._route_buffer[node] = []
            if len(self._route_buffer) == 1:
                # Items routed in this turn of the loop go out together, one message
                # per node, queued behind the commands issued before them.
                asyncio.get_running_loop().call_soon(self._flush_routes)
        buffer.append((item.user, item.kind, item.payload, item.session))

    def _flush_routes(self) -> None:
        buffers, self._route_buffer = self._route_buffer, {}
        for node, items in buffers.items():
            if self._degraded or len(self._queue) >= MAX_QUEUED:
                # Full or unreachable: the store has every entry (rule 3 of the doc).
                self.dropped += len(items)
                for item in items:
                    self._miss(item[0])
                continue
            self._queue.append(
                _Call(
                    ("PUBLISH", f"{self.prefix}route:{node}", _encode(items)), None,
                    tuple({item[0] for item in items}),
                )
            )  # fmt: skip
            assert self._wakeup is not None
            self._wakeup.set()

    async def _read_loop(self, pubsub: Any) -> None:
        handler = self._on_routed
        assert handler is not None
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    items = _decode_items(message["data"])
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.error("a malformed routed message on %s: %s", self._channel, exc)
                    continue
                for user, kind, payload, session in items:
                    try:
                        await handler(Routed(user, kind, payload, session))
                    except Exception:
                        log.exception("routed %s item for %s failed", kind, user)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            self._lost(exc)
        except Exception as exc:  # a bug: log it, and start over as after an outage
            log.exception("the Redis subscription failed")
            self._lost(exc)

    # -- the command queue ----------------------------------------------------------

    async def _call(self, *args: Any) -> Any:
        """Runs one command through the queue; raises BrokerError if Redis fails."""
        assert self._room is not None
        await self._room.acquire()
        if self._degraded or self._closed:
            self._room.release()
            raise BrokerError("Redis is unreachable")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(args, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    async def _flush_loop(self) -> None:
        assert self._wakeup is not None and self._room is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                n = min(len(self._queue), MAX_BATCH)
                batch = [self._queue.popleft() for _ in range(n)]
                try:
                    replies = await self._execute(batch)
                except (RedisError, OSError) as exc:
                    self._lost(exc)
                    error = BrokerError(f"Redis is unreachable: {exc}")
                    error.__cause__ = exc
                    self._answer(batch, [error] * len(batch))
                    self._fail_queue(error)
                    continue
                self._answer(batch, replies)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for call in batch:
            pipe.execute_command(*call.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if again:
            # Redis restarted (its script cache is empty): load them, run those again.
            await self._prepare()
            pipe = self._redis.pipeline(transaction=False)
            for i in again:
                pipe.execute_command(*batch[i].args)
            for i, reply in zip(again, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        return replies

    def _answer(self, batch: list[_Call], replies: list[Any]) -> None:
        assert self._room is not None
        for call, reply in zip(batch, replies, strict=True):
            future = call.future
            if future is None:  # a PUBLISH: nobody waits for it
                if isinstance(reply, BaseException):
                    self.dropped += 1
                    for user in call.users:
                        self._miss(user)
                    if not isinstance(reply, BrokerError):
                        log.warning("Redis refused %s: %s", call.args[0], reply)
                continue
            self._room.release()
            if future.done():
                continue
            if isinstance(reply, BrokerError):
                future.set_exception(reply)
            elif isinstance(reply, BaseException):
                error = BrokerError(f"Redis refused {call.args[0]}: {reply}")
                error.__cause__ = reply
                future.set_exception(error)
            else:
                future.set_result(reply)

    def _fail_queue(self, error: BrokerError) -> None:
        batch = list(self._queue)
        self._queue.clear()
        self._answer(batch, [error] * len(batch))

    # -- outages --------------------------------------------------------------------------

    def _miss(self, user: str) -> None:
        if self._missed_all:
            return
        self._missed.add(user)
        if len(self._missed) > MISSED_LIMIT:
            self._missed.clear()
            self._missed_all = True

    def _lost(self, exc: BaseException) -> None:
        """Redis failed: answer locally from now on, and reconnect in the background."""
        if self._closing:
            return
        if not self._degraded:
            self._degraded = True
            self.outages += 1
            log.warning(
                "Redis is unreachable (%s): node %s answers from its own %d sessions until "
                "it is back", exc, self.node, len(self._mine),
            )  # fmt: skip
        self._spawn_recovery()

    def _spawn_recovery(self) -> None:
        if self._closing or (self._recovery is not None and not self._recovery.done()):
            return
        self._degraded = True
        self._recovery = asyncio.get_running_loop().create_task(
            self._recover(), name="duplex-redis-recovery"
        )

    async def _recover(self) -> None:
        first, cap = BACKOFF
        attempt = 0
        subscriber = self._subscriber
        if subscriber is not None and subscriber is not asyncio.current_task():
            subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await subscriber
        self._subscriber = None
        while not self._closing:
            if self._pubsub is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()
                self._pubsub = None
            try:
                await self._reconnect()
            except (RedisError, OSError) as exc:
                delay = min(cap, first * 2**attempt) * random.uniform(0.5, 1.0)
                attempt = min(attempt + 1, 16)
                log.debug("Redis still unreachable (%s); next try in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            break

    async def _reconnect(self) -> None:
        await self._redis.ping()
        await self._prepare()
        # Withdrawals that failed, then every session we hold (Redis may be empty).
        downs = list(self._failed_downs.values())
        for start in range(0, len(downs), REPUBLISH_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for info in downs[start : start + REPUBLISH_BATCH]:
                user_key, field, member = self._keys(info)
                pipe.hdel(user_key, field)
                pipe.srem(self._index_key, member)
            await pipe.execute()
        self._failed_downs.clear()
        mine = list(self._mine.values())
        for start in range(0, len(mine), REPUBLISH_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for info in mine[start : start + REPUBLISH_BATCH]:
                user_key, field, member = self._keys(info)
                pipe.hset(user_key, field, _pack_info(info))
                pipe.sadd(self._index_key, member)
            await pipe.execute()
        await self._refresh_deadline()
        await self._subscribe()
        missed, missed_all = self._missed, self._missed_all
        self._missed, self._missed_all = set(), False
        self._degraded = False
        log.warning(
            "Redis is back: node %s published its %d sessions again and resyncs them",
            self.node, len(mine),
        )  # fmt: skip
        # Rule 2: what was routed here while we were away is in the store.
        if self._on_routed is not None:
            await self._on_routed(Routed("", "resync", None))
        # Rule 3: what we could not route, the nodes that hold the sessions fetch.
        if missed_all:
            for node in await self._redis.hkeys(self._nodes_key):
                name = node.decode() if isinstance(node, bytes) else str(node)
                if name != self.node:
                    await self.route(name, Routed("", "resync", None))
        else:
            for user in missed:
                for info in await self.sessions(user):
                    if info.node != self.node:
                        await self.route(info.node, Routed(user, "resync", None, info.session))
