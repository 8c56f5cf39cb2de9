"""Whether the gateway takes a job: a live worker must consume the model's lane (else 503
``no_workers``) and the lane's queue must be under its limit (else 429 ``queue_full``).

Live workers and queue depths are read from Redis and memoised for a fraction of a second, so
admission on a busy gateway costs a round trip per interval, not per request.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from rerankq.errors import NoWorkers, QueueFull
from rerankq.producer.constants import DEFAULT_LANE, queue_keys, queue_name
from rerankq.producer.presence import MEMO_S, AsyncLiveWorkers, WorkerPresence, serving
from rerankq.producer.settings import Settings


class Admission:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._workers = AsyncLiveWorkers(redis, settings.presence_interval_s)
        self._depths: dict[str, tuple[float, int]] = {}

    async def workers(self) -> list[WorkerPresence]:
        return await self._workers.read()

    async def served_before(self) -> set[str]:
        return await self._workers.served_before()

    async def admit(self, model: str) -> None:
        """Refuse work no one will take (NoWorkers) or that would queue past the lane's limit (QueueFull)."""
        lane = DEFAULT_LANE
        if not serving(await self.workers(), model, lane):
            raise NoWorkers(model, lane)
        queue = queue_name(model, lane)
        depth = await self.queue_depth(queue)
        if depth >= self._settings.max_queue_depth:
            raise QueueFull(queue, depth, self._settings.max_queue_depth, self._settings.retry_after_s)

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
