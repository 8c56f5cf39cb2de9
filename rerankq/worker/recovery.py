"""Jobs held by a worker that died come back in seconds, not after the visibility timeout.

How kombu's Redis transport holds a message (read before changing anything here): a consumer
BRPOPs it off its queue, then records it in the ``unacked`` hash (delivery tag -> ``[message,
exchange, routing_key]``) and the ``unacked_index`` sorted set (tag -> time); an ack removes
both. Any consumer's ``restore_visible`` puts back the messages whose index time is older than
the visibility timeout (one hour here, since a job may run minutes): that is the only way a
dead worker's messages return, and nothing records *which* worker holds a message. There is
also a window: a worker killed between the BRPOP and the HSET loses the message outright.

kombu has no hook for either, so this module writes by hand what it lacks (Lua, so each step is
atomic on the server):

- ``CLAIM``: pop the first message of the worker's lanes (in priority order) *and* record it in
  ``unacked``/``unacked_index`` and in the worker's own claims hash, in one step: a message is
  always in a queue or held by a named worker, never in between.
- ``ACK``: remove a message from ``unacked`` only if this worker still holds its claim. A worker
  that froze (SIGSTOP, a swapped-out host) and was given up on acks nothing it no longer holds:
  the copy a live worker took over stays protected.
- ``RESTORE``: for a dead worker (its heartbeat older than three presence intervals), move each
  message it holds back to the front of its queue, marked redelivered (as kombu marks it, so the
  delivery cap still counts), once: the claim is removed in the same step, so two sweepers never
  restore a message twice. Sweeps also run under kombu's own ``unacked_mutex``, so they never
  interleave with a visibility-timeout restore.

Every live worker sweeps (and ``rerankq exporter`` does too); a heartbeat comes from a thread
that never waits on the model or the batcher, so a long forward pass never looks like death.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from kombu.transport import redis as kombu_redis

from rerankq.core.constants import CLAIMANTS_KEY, HEARTBEATS_KEY, KOMBU_PRIORITY_STEPS, claims_key, queue_keys
from rerankq.core.live_workers import STALE_AFTER_INTERVALS
from rerankq.core.settings import Settings

log = logging.getLogger("rerankq.recovery")

UNACKED_KEY: str = kombu_redis.Channel.unacked_key
UNACKED_INDEX_KEY: str = kombu_redis.Channel.unacked_index_key
UNACKED_MUTEX_KEY: str = kombu_redis.Channel.unacked_mutex_key
UNACKED_MUTEX_EXPIRE_S: int = kombu_redis.Channel.unacked_mutex_expire

# KEYS: the lane lists in priority order, then unacked, unacked_index, this worker's claims,
# the claimants set. ARGV: now, worker id. Returns {list, message} or false.
CLAIM = """
local n = #KEYS - 4
local unacked, index, claims, claimants = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
for i = 1, n do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, message = pcall(cjson.decode, item)
    if ok and type(message) == 'table' and type(message.properties) == 'table' then
      local tag, info = message.properties.delivery_tag, message.properties.delivery_info
      if type(tag) == 'string' and type(info) == 'table' then
        local held = '[' .. item .. ', ' .. cjson.encode(info.exchange or '') .. ', '
          .. cjson.encode(info.routing_key or '') .. ']'
        redis.call('HSET', unacked, tag, held)
        redis.call('ZADD', index, ARGV[1], tag)
        redis.call('HSET', claims, tag, ARGV[1])
        redis.call('SADD', claimants, ARGV[2])
      end
    end
    return {KEYS[i], item}
  end
end
return false
"""

# KEYS: this worker's claims, unacked, unacked_index. ARGV: the delivery tag. Returns 1 when
# this worker held the message (and it is now acknowledged), 0 when it no longer did.
ACK = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

# KEYS: the dead worker's claims, unacked, unacked_index, claimants, then one queue list per
# message. ARGV: the worker id, then (tag, message) pairs. Returns how many were put back.
RESTORE = """
local restored = 0
for i = 1, (#ARGV - 1) / 2 do
  local tag, message = ARGV[2 * i], ARGV[2 * i + 1]
  if redis.call('HDEL', KEYS[1], tag) == 1 and redis.call('HDEL', KEYS[2], tag) == 1 then
    redis.call('ZREM', KEYS[3], tag)
    redis.call('RPUSH', KEYS[4 + i], message)
    restored = restored + 1
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[1])
end
return restored
"""


def claim(client: redis.Redis, lists: Sequence[str], worker_id: str) -> tuple[str, bytes] | None:
    """The next message of ``lists`` (most urgent first), now held by ``worker_id``."""
    keys = [*lists, UNACKED_KEY, UNACKED_INDEX_KEY, claims_key(worker_id), CLAIMANTS_KEY]
    found = _run(client, CLAIM, keys, [str(time.time()), worker_id])
    if not found:
        return None
    source, message = found
    return str(source.decode()), bytes(message)


def acknowledge(client: Any, worker_id: str, tag: str) -> bool:
    """``client`` may be a pipeline. True when this worker still held the message."""
    keys = [claims_key(worker_id), UNACKED_KEY, UNACKED_INDEX_KEY]
    return bool(_run(client, ACK, keys, [tag]))


def release(client: Any, worker_id: str, tag: str) -> None:
    """Drop this worker's claim on a message kombu restores or rejects itself."""
    client.hdel(claims_key(worker_id), tag)


@dataclass
class SweepReport:
    dead: list[str] = field(default_factory=list)  # workers given up on in this sweep
    restored: int = 0  # messages put back on their queues


def sweep(client: redis.Redis, settings: Settings) -> SweepReport:
    """Restore every message held by a worker whose heartbeat is stale. Safe to run from any
    number of processes at once (see the module docstring)."""
    report = SweepReport()
    lock = client.lock(UNACKED_MUTEX_KEY, timeout=UNACKED_MUTEX_EXPIRE_S)
    if not lock.acquire(blocking=False):
        return report  # another sweeper (or kombu's visibility restore) is at work
    try:
        for worker_id in dead_workers(client, settings.presence_interval_s):
            report.dead.append(worker_id)
            report.restored += restore_worker(client, worker_id)
    finally:
        lock.release()
    return report


def dead_workers(client: redis.Redis, interval_s: float, now: float | None = None) -> list[str]:
    """Claimants whose heartbeat is missing or older than three presence intervals."""
    claimants = sorted(member.decode() for member in cast(set[bytes], client.smembers(CLAIMANTS_KEY)))
    if not claimants:
        return []
    beats = cast(list[bytes | None], client.hmget(HEARTBEATS_KEY, claimants))
    cutoff = (now if now is not None else time.time()) - interval_s * STALE_AFTER_INTERVALS
    return [worker for worker, beat in zip(claimants, beats, strict=True) if beat is None or float(beat) < cutoff]


def restore_worker(client: redis.Redis, worker_id: str, event: str = "dead_worker_restored") -> int:
    """Put back every message ``worker_id`` holds; returns how many were put back."""
    tags = [tag.decode() for tag in cast(list[bytes], client.hkeys(claims_key(worker_id)))]
    if not tags:
        client.srem(CLAIMANTS_KEY, worker_id)
        return 0
    held = cast(list[bytes | None], client.hmget(UNACKED_KEY, tags))
    pairs = [(tag, redelivered(entry)) for tag, entry in zip(tags, held, strict=True)]
    keys = [claims_key(worker_id), UNACKED_KEY, UNACKED_INDEX_KEY, CLAIMANTS_KEY, *(queue for _, (queue, _) in pairs)]
    args = [worker_id, *(value for tag, (_, message) in pairs for value in (tag, message))]
    restored = int(_run(client, RESTORE, keys, args))
    log.warning(json.dumps({"event": event, "worker": worker_id, "restored": restored}))
    return restored


def redelivered(entry: bytes | None) -> tuple[str, str]:
    """(queue list, message) for a held entry, marked redelivered as kombu's own restore marks
    it; an entry gone (acked or restored meanwhile) gives ("", ""), which RESTORE skips. The
    queue is the routing key: rerankq publishes through the default exchange to its queues."""
    if entry is None:
        return UNACKED_KEY, ""
    message, _exchange, routing_key = json.loads(entry)
    message.setdefault("headers", {})["redelivered"] = True
    message.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
    return priority_list(routing_key, message), json.dumps(message)


def priority_list(queue: str, message: dict[str, Any]) -> str:
    """The list of ``queue`` that holds messages of the message's priority (kombu's naming)."""
    try:
        priority = max(0, min(int(message["properties"]["priority"]), 9))
    except (KeyError, TypeError, ValueError):
        priority = 0
    level = max(index for index, step in enumerate(KOMBU_PRIORITY_STEPS) if step <= priority)
    return queue_keys(queue)[level]


def _run(client: Any, script: str, keys: Sequence[str], args: Sequence[str]) -> Any:
    return client.eval(script, len(keys), *keys, *args)


class Sweeper:
    """A daemon thread that sweeps every presence interval (workers and the exporter run one)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rerankq-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._settings.presence_interval_s):
            try:
                sweep(self._client, self._settings)
            except redis.RedisError as e:  # Redis away: the next sweep tries again
                log.warning("dead-worker sweep failed: %s", e)
