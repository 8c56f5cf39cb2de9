"""What the gateway knows about the fleet: live workers per model and lane, and queue depths.

Both are read from Redis and memoised for a fraction of a second, so admission checks on a busy
gateway cost a round trip per interval, not per request.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from rerankq.producer.constants import WORKERS_KEY, queue_keys
from rerankq.producer.presence import WorkerPresence, live_presences

MEMO_S = 0.5


class FleetView:
    def __init__(self, redis: aioredis.Redis, presence_interval_s: float) -> None:
        self._redis = redis
        self._interval_s = presence_interval_s
        self._workers: tuple[float, list[WorkerPresence]] = (float("-inf"), [])
        self._depths: dict[str, tuple[float, int]] = {}

    async def workers(self) -> list[WorkerPresence]:
        read_at, workers = self._workers
        if time.monotonic() - read_at > MEMO_S:
            workers = await self._read_workers()
            self._workers = (time.monotonic(), workers)
        return workers

    async def queue_depth(self, queue: str) -> int:
        """Messages waiting in ``queue``, over all its priority lists (reserved jobs not included)."""
        read_at, depth = self._depths.get(queue, (float("-inf"), 0))
        if time.monotonic() - read_at > MEMO_S:
            pipe = self._redis.pipeline(transaction=False)
            for key in queue_keys(queue):
                pipe.llen(key)
            depth = sum(await pipe.execute())
            self._depths[queue] = (time.monotonic(), depth)
        return depth

    async def _read_workers(self) -> list[WorkerPresence]:
        # redis-py types its commands for both clients ("Awaitable[T] | T"); these are awaitables
        entries: dict[Any, Any] = await self._redis.hgetall(WORKERS_KEY)  # type: ignore[misc]
        live, stale = live_presences(entries, self._interval_s)
        if stale:
            await self._redis.hdel(WORKERS_KEY, *stale)  # type: ignore[misc]
        return live
