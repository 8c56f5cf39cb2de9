"""Which workers are alive, and what they serve: one Redis hash every worker refreshes.

Celery can answer this too (``inspect().active_queues()``), but only by a broadcast that waits
out a timeout, too slow for a gateway checking every request and for a readiness probe. Each
worker instead rewrites its entry every ``presence_interval_s``; readers treat an entry older
than three intervals as a dead worker and prune it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from rerankq.core.constants import KEY_PREFIX, LANES_SEEN_KEY, WORKERS_KEY, queue_name

STALE_AFTER_INTERVALS = 3
MEMO_S = 0.5  # how long a busy reader (the SDK, the gateway) trusts what it read


@dataclass(frozen=True)
class WorkerPresence:
    worker_id: str  # Celery hostname
    model: str
    lanes: tuple[str, ...]
    device: str
    identity: str
    seen_at: float  # unix time of the last refresh
    held: dict[str, int] = field(default_factory=dict)  # jobs reserved and unfinished, by lane

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerPresence | None:
        try:
            data: dict[str, Any] = json.loads(raw)
            return cls(**{**data, "lanes": tuple(data["lanes"])})
        except (ValueError, TypeError, KeyError):
            return None  # a foreign or half-written entry: not a worker we can route to


def live_presences(
    raw_entries: dict[Any, Any], interval_s: float, now: float | None = None
) -> tuple[list[WorkerPresence], list[Any]]:
    """Split the hash's entries into live workers and the fields of stale (or unreadable) ones."""
    cutoff = (now if now is not None else time.time()) - interval_s * STALE_AFTER_INTERVALS
    live, stale = [], []
    for key, raw in raw_entries.items():
        presence = WorkerPresence.from_json(raw)
        if presence is None or presence.seen_at < cutoff:
            stale.append(key)
        else:
            live.append(presence)
    return live, stale


def serving(presences: list[WorkerPresence], model: str, lane: str) -> list[WorkerPresence]:
    return [p for p in presences if p.model == model and lane in p.lanes]


def read_live(client: redis.Redis, interval_s: float) -> list[WorkerPresence]:
    """The live workers, read once (the CLI, the exporter, a bulk run's start)."""
    live, _ = live_presences(cast(dict[Any, Any], client.hgetall(WORKERS_KEY)), interval_s)
    return live


class LiveWorkers:
    """The live workers for a blocking producer, and the models served here before, read at
    most every ``MEMO_S``."""

    def __init__(self, client: redis.Redis, interval_s: float) -> None:
        self._client = client
        self._interval_s = interval_s
        self._read: tuple[float, list[WorkerPresence], set[str]] = (float("-inf"), [], set())

    def read(self) -> list[WorkerPresence]:
        return self._fresh()[1]

    def served_before(self) -> set[str]:
        return self._fresh()[2]

    def _fresh(self) -> tuple[float, list[WorkerPresence], set[str]]:
        if time.monotonic() - self._read[0] > MEMO_S:
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(WORKERS_KEY)
            pipe.hkeys(LANES_SEEN_KEY)
            entries, queues = pipe.execute()
            workers, _ = live_presences(entries, self._interval_s)
            self._read = (time.monotonic(), workers, models_served_before(queues))
        return self._read


async def read_live_async(client: aioredis.Redis, interval_s: float, prune: bool = False) -> list[WorkerPresence]:
    """``read_live`` for an event loop; ``prune`` also removes stale entries from the hash."""
    # redis-py types its commands for both clients ("Awaitable[T] | T"); these are awaitables
    entries: dict[Any, Any] = await client.hgetall(WORKERS_KEY)  # type: ignore[misc]
    live, stale = live_presences(entries, interval_s)
    if prune and stale:
        await client.hdel(WORKERS_KEY, *stale)  # type: ignore[misc]
    return live


class AsyncLiveWorkers:
    """The same for the gateway's event loop; it also prunes stale entries from the hash."""

    def __init__(self, client: aioredis.Redis, interval_s: float) -> None:
        self._client = client
        self._interval_s = interval_s
        self._read: tuple[float, list[WorkerPresence], set[str]] = (float("-inf"), [], set())

    async def read(self) -> list[WorkerPresence]:
        return (await self._fresh())[1]

    async def served_before(self) -> set[str]:
        return (await self._fresh())[2]

    async def _fresh(self) -> tuple[float, list[WorkerPresence], set[str]]:
        if time.monotonic() - self._read[0] > MEMO_S:
            workers = await read_live_async(self._client, self._interval_s, prune=True)
            queues: list[bytes] = await self._client.hkeys(LANES_SEEN_KEY)  # type: ignore[misc]
            self._read = (time.monotonic(), workers, models_served_before(queues))
        return self._read


def models_served_before(queues: list[bytes]) -> set[str]:
    """The models of the queues in ``LANES_SEEN_KEY``: names a worker has served on this Redis."""
    return {queue.decode(errors="replace").removeprefix(f"{KEY_PREFIX}.").rpartition(".")[0] for queue in queues}


def last_consumed(client: redis.Redis, model: str, lane: str) -> float | None:
    """When a live worker last announced it consumes the lane (None: never, as far as Redis knows)."""
    return _seen_at(client.hget(LANES_SEEN_KEY, queue_name(model, lane)))  # type: ignore[arg-type]


async def last_consumed_async(client: aioredis.Redis, model: str, lane: str) -> float | None:
    """``last_consumed`` for an event loop."""
    return _seen_at(await client.hget(LANES_SEEN_KEY, queue_name(model, lane)))  # type: ignore[misc,arg-type]


def _seen_at(raw: Any) -> float | None:
    return float(cast(bytes, raw)) if raw else None
