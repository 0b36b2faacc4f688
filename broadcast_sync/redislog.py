"""The room's log in Redis: one room over many processes and hosts.

Keys, all under the room's prefix ``P``:

- ``P:meta``, a hash: the log's ``epoch`` and the last ``offset`` given.
- ``P:log``, a stream: event ``N`` has the entry id ``N-0``; trimmed to
  ``--history-size`` entries, which a starting node takes as its history,
  plus :data:`CATCH_UP_ENTRIES` for nodes that fell behind.
- ``P:online``, a hash: who is in the room, by the log's joins and leaves.
- ``P:names``, a hash: each key of a name in use (``nicknames.name_keys``)
  and the node that holds it. A name is free while none of its keys is held,
  so ``Alice`` is taken while ``alice`` is online, and so is ``alice`` with a
  Cyrillic ``a``.
- ``P:nodes``, a set of node ids; ``P:node:ID``, a key that lives while its
  node refreshes it; ``P:node:ID:held``, a hash: each name that node holds,
  and its keys as a JSON array (Lua cannot compute them, and a leave must
  free them). Not ``P:node:ID:names``, the set that held names before they
  had keys: the scripts of either version fail on the other's type.

Strategy: every change is one Lua script, so it is atomic. An append takes
the next offset and adds the entry in one step, which is what makes one
global order. A node delivers only what it reads back from the stream, its
own clients' messages included, so every client on every node sees the same
sequence. A leave is logged and its name freed in one step, and the survivors
of a dead node do both for each of its names, so each leave is logged once.

A command that times out may still run later: a frozen Redis runs what it
had received when it wakes up. So the scripts that log a message or reserve
a name carry a deadline, in Redis's clock, and do nothing once it passed:
a sender told "message not sent" is never contradicted by an echo.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broadcast_sync.config import ServerConfig
from broadcast_sync.events import Event, EventId, EventKind, LoggedEvent, new_epoch
from broadcast_sync.log import LogUnavailable, Snapshot, Subscriber
from broadcast_sync.names import RoomFull, name_variants
from broadcast_sync.nicknames import name_keys

logger = logging.getLogger(__name__)

# Timeouts
#: A command to a healthy Redis on a LAN takes a millisecond: a frozen one
#: is given up on quickly, and the sender gets a notice instead of a wait.
COMMAND_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0
#: A script that Redis runs later than this before its sender gives up does
#: nothing: the answer could come too late. Far more than a round trip plus
#: the error of the measured clock offset (half a round trip).
DEADLINE_MARGIN_SECONDS = 0.5
#: How long one XREAD waits for new entries: the delay of stop().
READ_BLOCK_MS = 250
#: Entries one XREAD returns at most: one fan-out batch.
READ_COUNT = 1000
#: A node refreshes its key this often, and looks for dead nodes.
REFRESH_SECONDS = 5.0
#: A node whose key was not refreshed this long is dead: its users' leaves
#: are logged within NODE_TTL + REFRESH_SECONDS (20 s).
NODE_TTL_SECONDS = 15.0
#: Reconnection backoff, doubled from the first to the last.
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 2.0
#: After an outage, how long a node waits before it looks for dead nodes:
#: every key may have expired meanwhile, and the live nodes need a retry
#: and a command (twice that, to be safe) to get back and refresh theirs.
REAP_GRACE_SECONDS = 2 * (BACKOFF_MAX_SECONDS + COMMAND_TIMEOUT)

# Limits
#: Connections shared by the threads that publish; more wait for one.
POOL_SIZE = 32
#: Entries kept beyond the history: a reader that fell behind (a burst, an
#: outage of its own node) still finds every entry it has not delivered,
#: even with --history-size 0. Minutes of a busy room, a few MB at most.
CATCH_UP_ENTRIES = 10_000
#: Names offered to the reserve script at once: the first free one wins.
NAME_CANDIDATES = 32

#: Fails a script that runs after the deadline its sender gave (ms, in
#: Redis's clock): the sender has given up, or will before the answer comes.
_IN_TIME = """
local function check_deadline(deadline)
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000 > tonumber(deadline) then
    return redis.error_reply('TOOLATE Redis ran the command after its deadline')
  end
  return nil
end
"""

#: Appends an event; the epoch is created (and an old stream dropped) when
#: the log is new. Shared by the scripts that log events.
_APPEND = """
local function ensure_epoch(meta, stream, fresh)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = fresh
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  end
  return epoch
end

local function append(meta, stream, maxlen, fresh, kind, user, body, ts)
  ensure_epoch(meta, stream, fresh)
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  redis.call('XADD', stream, 'MAXLEN', maxlen, offset .. '-0',
             'k', kind, 'u', user, 'b', body, 't', ts)
  return offset
end
"""

#: KEYS: meta, log, online. ARGV: fresh epoch, history size. The epoch, the
#: newest offset, who is online and the newest entries, newest first.
_SNAPSHOT = (
    _APPEND
    + """
local epoch = ensure_epoch(KEYS[1], KEYS[2], ARGV[1])
local offset = redis.call('HGET', KEYS[1], 'offset')
local newest = {}
if tonumber(ARGV[2]) > 0 then
  newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
end
return {epoch, offset, redis.call('HKEYS', KEYS[3]), newest}
"""
)

#: KEYS: meta, log, online. ARGV: max length, fresh epoch, kind, user, body, ts,
#: deadline.
_LOG_EVENT = (
    _IN_TIME
    + _APPEND
    + """
local late = check_deadline(ARGV[7])
if late then
  return late
end
if ARGV[3] == 'join' then
  redis.call('HSET', KEYS[3], ARGV[4], 1)
end
local offset = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
                      ARGV[6])
return {redis.call('HGET', KEYS[1], 'epoch'), offset}
"""
)

#: Holds a name's keys for a node if they are free, or if ``again`` and the
#: node holds them already.
_HOLD = """
local function hold(names, held, node, name, encoded, again)
  local keys = cjson.decode(encoded)
  for _, key in ipairs(keys) do
    local holder = redis.call('HGET', names, key)
    if holder and not (again and holder == node) then
      return false
    end
  end
  for _, key in ipairs(keys) do
    redis.call('HSET', names, key, node)
  end
  redis.call('HSET', held, name, encoded)
  return true
end
"""

#: KEYS: names, node's names. ARGV: node, deadline, then each candidate in
#: order of preference and its keys (a JSON array).
_RESERVE = (
    _IN_TIME
    + _HOLD
    + """
local late = check_deadline(ARGV[2])
if late then
  return late
end
for i = 3, #ARGV, 2 do
  if hold(KEYS[1], KEYS[2], ARGV[1], ARGV[i], ARGV[i + 1], false) then
    return ARGV[i]
  end
end
return false
"""
)

#: KEYS: names, node's names, online. ARGV: node, how many of the names
#: joined, then the names to hold again (the joined ones first), each with
#: its keys: the joined are online again too, so that their leaves are logged.
_REGISTER = (
    _HOLD
    + """
local lost = {}
for i = 3, #ARGV, 2 do
  if hold(KEYS[1], KEYS[2], ARGV[1], ARGV[i], ARGV[i + 1], true) then
    if (i - 1) / 2 <= tonumber(ARGV[2]) then
      redis.call('HSET', KEYS[3], ARGV[i], 1)
    end
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
)

#: KEYS: meta, log, online. ARGV: epoch, offset, fresh epoch. Starts a new,
#: empty log if the log of ``epoch`` went back to before ``offset``.
_REBASE = """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if meta[1] == ARGV[1] and tonumber(meta[2]) < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'offset', 0)
end
return 0
"""

#: Logs the leave of a user who is online, then frees the name's keys that
#: its node holds: one step.
_LEAVE = """
local function leave(meta, stream, online, names, held, maxlen, fresh, name, node,
                     ts, log)
  if log and redis.call('HDEL', online, name) == 1 then
    append(meta, stream, maxlen, fresh, 'leave', name, '', ts)
  end
  local encoded = redis.call('HGET', held, name)
  if encoded then
    for _, key in ipairs(cjson.decode(encoded)) do
      if redis.call('HGET', names, key) == node then
        redis.call('HDEL', names, key)
      end
    end
  end
  redis.call('HDEL', held, name)
end
"""

#: KEYS: meta, log, online, names, node's names.
#: ARGV: max length, fresh epoch, name, node, ts, '1' to log a leave.
_LOG_LEAVE = (
    _APPEND
    + _LEAVE
    + """
leave(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3],
      ARGV[4], ARGV[5], ARGV[6] == '1')
return redis.call('HGET', KEYS[1], 'offset')
"""
)

#: KEYS: meta, log, online, names, nodes. ARGV: max length, fresh epoch, ts,
#: key prefix. Logs the leaves of the users of every dead node.
_REAP = (
    _APPEND
    + _LEAVE
    + """
local reaped = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local node_key = ARGV[4] .. ':node:' .. node
  if redis.call('EXISTS', node_key) == 0 then
    local held = node_key .. ':held'
    for _, name in ipairs(redis.call('HKEYS', held)) do
      leave(KEYS[1], KEYS[2], KEYS[3], KEYS[4], held, ARGV[1], ARGV[2], name,
            node, ARGV[3], true)
      reaped = reaped + 1
    end
    redis.call('DEL', held)
    redis.call('SREM', KEYS[5], node)
  end
end
return reaped
"""
)


class RedisLog:
    """The log and the names of a room shared by every node on one Redis.

    One reader thread per process reads the stream with a blocking XREAD
    from the last entry it saw, and hands each batch to the subscriber. It
    also refreshes this node's key, logs the leaves of dead nodes, and
    reconnects with backoff when Redis goes away.
    """

    def __init__(self, config: ServerConfig) -> None:
        assert config.redis_url is not None
        self.url = config.redis_url
        self._history_size = config.history_size
        self._max_length = config.history_size + CATCH_UP_ENTRIES
        self._max_clients = config.max_clients
        self._max_name_chars = config.max_username_chars
        #: This process, among the nodes of the room.
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        prefix = config.redis_prefix
        self._prefix = prefix
        self._meta = f"{prefix}:meta"
        self._stream = f"{prefix}:log"
        self._online = f"{prefix}:online"
        self._names = f"{prefix}:names"
        self._nodes = f"{prefix}:nodes"
        self._node_key = f"{prefix}:node:{self.node}"
        self._node_names = f"{self._node_key}:held"

        # Commands fail at once, without redis-py's retries: the reader
        # thread does the reconnecting, and senders get a notice.
        self._redis = _client(self.url, COMMAND_TIMEOUT)
        # Its own connection: a blocking XREAD must not wait for the pool.
        self._reader_redis = _client(
            self.url, READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT, pool_size=1
        )
        self._snapshot_script = self._redis.register_script(_SNAPSHOT)
        self._log_event_script = self._redis.register_script(_LOG_EVENT)
        self._reserve_script = self._redis.register_script(_RESERVE)
        self._register_script = self._redis.register_script(_REGISTER)
        self._leave_script = self._redis.register_script(_LOG_LEAVE)
        self._reap_script = self._redis.register_script(_REAP)
        self._rebase_script = self._redis.register_script(_REBASE)

        #: Guards the fields below, written by the connection threads and
        #: read by the reader thread.
        self._lock = threading.Lock()
        #: The names this node holds, and those of them whose join was logged.
        self._local_names: set[str] = set()
        self._joined_names: set[str] = set()
        #: Leaves that could not be logged yet, in order: (name, log it?).
        self._pending_leaves: list[tuple[str, bool]] = []
        self._appended: EventId | None = None
        #: Set while Redis can be reached; else calls fail at once. Cleared
        #: and set by the reader thread.
        self._reachable = threading.Event()
        self._reachable.set()
        #: Redis's clock minus ours, in seconds, for the deadlines. Written by
        #: the reader thread, read by any: a float assignment needs no lock.
        self._clock_offset = 0.0

        # Owned by the reader thread.
        self._subscriber: Subscriber | None = None
        self._epoch = ""
        #: The offset of the last entry read.
        self._cursor = 0
        self._next_refresh = 0.0
        #: Monotonic time before which dead nodes are not looked for.
        self._reap_after = 0.0
        #: Set by stop(); the reader waits on it between retries.
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis reader")

    # The EventLog interface.

    @property
    def appended(self) -> EventId | None:
        """The id of the last event this node appended, if any."""
        with self._lock:
            return self._appended

    def reachable(self) -> bool:
        """Whether Redis could be reached, as the reader last found."""
        return self._reachable.is_set()

    def start(self, subscriber: Subscriber) -> None:
        """Read where the log stands, hand it to ``subscriber``, start reading.

        Raises:
            LogUnavailable: if Redis cannot be reached.
        """
        self._subscriber = subscriber
        try:
            self._refresh()
            self._restart(lost=False)
        except redis.RedisError as exc:
            self._disconnect()  # the server never calls stop() then
            raise LogUnavailable(
                f"cannot reach Redis at {self._where()}: {exc}"
            ) from exc
        logger.info(
            "room %r on Redis at %s, node %s", self._prefix, self._where(), self.node
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the reader; log what leaves are left; let the node go."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(redis.RedisError):
            self._log_pending_leaves()
            with self._lock:
                holds_names = bool(self._local_names)
            if not holds_names:
                # Else the node key expires, and the survivors log the leaves.
                self._redis.delete(self._node_key, self._node_names)
                self._redis.srem(self._nodes, self.node)
        self._disconnect()

    def reserve_name(self, requested: str) -> str:
        """Reserve the first free variant of ``requested`` in the whole room."""
        with self._lock:
            if len(self._local_names) >= self._max_clients:
                raise RoomFull(f"the server is full ({self._max_clients} clients)")
        variants = name_variants(requested, self._max_name_chars)
        while True:
            # name_variants raises RoomFull once no variant fits.
            candidates = itertools.islice(variants, NAME_CANDIDATES)
            name = self._call(
                self._reserve_script,
                [self._names, self._node_names],
                [self.node, self._deadline(), *_with_keys(candidates)],
            )
            if name is not None:
                name = name.decode()
                with self._lock:
                    self._local_names.add(name)
                return str(name)

    def release_name(self, name: str) -> None:
        """Free a name whose client never joined."""
        self.leave(name, None)

    def append(self, event: Event) -> EventId:
        """Log ``event``; the reader delivers it when it reads it back."""
        body = event.body.encode() if isinstance(event.body, str) else event.body
        epoch, offset = self._call(
            self._log_event_script,
            [self._meta, self._stream, self._online],
            [
                self._max_length,
                new_epoch(),
                _stored_kind(event),
                event.user,
                body,
                repr(event.ts),
                self._deadline(),
            ],
        )
        event_id = EventId(epoch.decode(), int(offset))
        with self._lock:
            if event.kind is EventKind.JOIN:
                self._joined_names.add(event.user)
            last = self._appended
            if (
                last is None
                or last.epoch != event_id.epoch
                or last.offset < event_id.offset
            ):
                self._appended = event_id
        return event_id

    def leave(self, name: str, event: Event | None) -> None:
        """Log the leave and free the name, now or once Redis is back."""
        if self._reachable.is_set():
            try:
                self._leave(name, event is not None)
            except redis.RedisError:
                pass
            else:
                return
        with self._lock:
            self._pending_leaves.append((name, event is not None))
        logger.info("the leave of %s will be logged once Redis is back", name)

    # Calls from any thread.

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script``, or raise :class:`LogUnavailable`."""
        if not self._reachable.is_set():
            raise LogUnavailable("the chat is unavailable: Redis cannot be reached")
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise LogUnavailable(f"the chat is unavailable: {exc}") from exc

    def _deadline(self) -> str:
        """When Redis must have run a command sent now, in ms of its clock.

        The sender waits COMMAND_TIMEOUT from the moment it sends, which is
        after now: a script run by the deadline answers a sender still
        waiting; one run later does nothing.
        """
        deadline = (
            time.time() + self._clock_offset + COMMAND_TIMEOUT - DEADLINE_MARGIN_SECONDS
        )
        return repr(deadline * 1000)

    def _disconnect(self) -> None:
        """Close every connection: ``Redis.close()`` leaves a given pool open."""
        self._redis.connection_pool.disconnect()
        self._reader_redis.connection_pool.disconnect()

    def _leave(self, name: str, log_it: bool) -> None:
        """Log the leave of ``name`` if ``log_it`` and it is online; free it.

        Raises:
            redis.RedisError: if Redis cannot be reached.
        """
        self._leave_script(
            keys=[
                self._meta,
                self._stream,
                self._online,
                self._names,
                self._node_names,
            ],
            args=[
                self._max_length,
                new_epoch(),
                name,
                self.node,
                repr(time.time()),
                "1" if log_it else "0",
            ],
        )
        with self._lock:
            self._local_names.discard(name)
            self._joined_names.discard(name)

    def _where(self) -> str:
        """Where Redis is, without the URL's password, for messages."""
        parsed = urllib.parse.urlsplit(self.url)
        return f"{parsed.hostname}:{parsed.port or 6379}"

    # The reader thread.

    def _run(self) -> None:
        delay = BACKOFF_FIRST_SECONDS
        while not self._stopping.is_set():
            try:
                self._step()
            except redis.RedisError as exc:
                if self._reachable.is_set():
                    logger.warning(
                        "lost Redis at %s: %s; reconnecting", self._where(), exc
                    )
                    self._reachable.clear()
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)
                continue
            if not self._reachable.is_set():
                logger.warning("Redis at %s is back", self._where())
                self._reap_after = time.monotonic() + REAP_GRACE_SECONDS
                self._reachable.set()
                delay = BACKOFF_FIRST_SECONDS

    def _step(self) -> None:
        """Check the epoch after an outage, do the chores, read once."""
        if not self._reachable.is_set():
            self._ping_and_check_epoch()
        with self._lock:
            pending = bool(self._pending_leaves)
        if pending:
            # Not only after an outage the reader saw: a leave can time out
            # alone, or after the reader got back.
            self._log_pending_leaves()
        if time.monotonic() >= self._next_refresh:
            self._refresh()
        reply: Any = self._reader_redis.xread(
            {self._stream: f"{self._cursor}-0"}, count=READ_COUNT, block=READ_BLOCK_MS
        )
        if not reply or not reply[0][1]:
            self._ping_and_check_epoch()
            return
        entries = [_logged(entry_id, fields) for entry_id, fields in reply[0][1]]
        self._cursor = entries[-1].offset
        assert self._subscriber is not None
        self._subscriber.deliver(entries)

    def _ping_and_check_epoch(self) -> None:
        """Start over if the log was lost: Redis restarted empty, or from an
        older copy (persistence may lose the last writes), or was flushed."""
        meta: Any = self._reader_redis.hmget(self._meta, ["epoch", "offset"])
        epoch, offset = meta
        if epoch is not None and epoch.decode() == self._epoch:
            if int(offset or 0) >= self._cursor:
                return
            # The log went back in time: its next offsets would name events
            # other than those delivered. Start a new log, as if Redis came
            # back empty; the first node to see it does it for all.
            self._rebase_script(
                keys=[self._meta, self._stream, self._online],
                args=[self._epoch, self._cursor, new_epoch()],
            )
        self._register_local_names()
        self._restart(lost=True)

    def _restart(self, *, lost: bool) -> None:
        """Read where the log stands and hand it to the subscriber.

        Args:
            lost: The log this node read was lost, and another began. Its
                events are read from the first: other nodes may have logged
                some before this node noticed. At start, nothing before the
                newest event concerns this node.
        """
        # A new log is read from its first event: no history to take.
        history_size = 0 if lost else self._history_size
        epoch, offset, online, newest = self._snapshot_script(
            keys=[self._meta, self._stream, self._online],
            args=[new_epoch(), history_size],
        )
        self._epoch = epoch.decode()
        history = [_logged(entry_id, _fields(flat)) for entry_id, flat in newest]
        snapshot = Snapshot(
            self._epoch,
            0 if lost else int(offset or 0),
            frozenset(name.decode() for name in online),
            history[::-1],
        )
        self._cursor = snapshot.offset
        assert self._subscriber is not None
        self._subscriber.restart(snapshot)

    def _register_local_names(self) -> None:
        """Hold this node's names again, and put its users back online,
        after Redis lost them."""
        with self._lock:
            joined = sorted(self._joined_names)
            others = sorted(self._local_names - self._joined_names)
        if not joined and not others:
            return
        lost = self._register_script(
            keys=[self._names, self._node_names, self._online],
            args=[self.node, len(joined), *_with_keys([*joined, *others])],
        )
        for name in lost:
            logger.warning("the name %s is now held by another node", name.decode())

    def _refresh(self) -> None:
        """Keep this node alive in Redis, measure the clocks' offset, and log
        the leaves of dead nodes."""
        before = time.time()
        seconds, microseconds = self._redis.time()
        self._clock_offset = seconds + microseconds / 1e6 - (before + time.time()) / 2
        pipeline = self._redis.pipeline(transaction=True)
        pipeline.set(self._node_key, 1, px=int(NODE_TTL_SECONDS * 1000))
        pipeline.sadd(self._nodes, self.node)
        pipeline.execute()
        self._next_refresh = time.monotonic() + REFRESH_SECONDS
        # Not while getting back from an outage, nor for a grace period after.
        if not self._reachable.is_set() or time.monotonic() < self._reap_after:
            return
        reaped = self._reap_script(
            keys=[self._meta, self._stream, self._online, self._names, self._nodes],
            args=[self._max_length, new_epoch(), repr(time.time()), self._prefix],
        )
        if reaped:
            logger.info("freed %d names of nodes that stopped answering", reaped)

    def _log_pending_leaves(self) -> None:
        """Log the leaves that waited for Redis, in order."""
        with self._lock:
            pending, self._pending_leaves = self._pending_leaves, []
        for index, (name, log_it) in enumerate(pending):
            try:
                self._leave(name, log_it)
            except redis.RedisError:
                with self._lock:
                    self._pending_leaves[:0] = pending[index:]
                raise


def _with_keys(names: Iterable[str]) -> list[str]:
    """Each of ``names`` followed by its keys, as a JSON array for Lua."""
    return [
        part
        for name in names
        for part in (name, json.dumps(sorted(name_keys(name)), ensure_ascii=False))
    ]


def _client(url: str, timeout: float, pool_size: int = POOL_SIZE) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool)


def _stored_kind(event: Event) -> str:
    if event.kind is EventKind.DATA and isinstance(event.body, bytes):
        return "binary"
    return event.kind.value


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields, which a script returns as a flat list."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _logged(entry_id: bytes, fields: dict[bytes, bytes]) -> LoggedEvent:
    """An event as read from the stream."""
    kind = fields[b"k"].decode()
    raw = fields[b"b"]
    body: str | bytes = raw if kind == "binary" else raw.decode()
    event = Event(
        EventKind.DATA if kind == "binary" else EventKind(kind),
        fields[b"u"].decode(),
        float(fields[b"t"]),
        body,
    )
    return LoggedEvent(int(entry_id.split(b"-")[0]), event)
