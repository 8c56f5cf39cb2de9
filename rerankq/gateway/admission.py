"""Whether the gateway takes a job: a live worker must consume the model's lane (else 503
``no_workers``) and the lane's queue must be under its limit (else 429 ``queue_full``).

Live workers are read from Redis and memoised for a fraction of a second. The queue limit is
atomic: on Redis one Lua script counts the lane's messages plus the jobs gateways are still
sending and, below the limit, reserves a place; the place is given back once the job is on the
queue (or failed to get there). Reading the depth and then sending let 300 concurrent requests
past a limit of 30. On RabbitMQ the broker counts the lane (see ``_reserve_on_rabbitmq``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from rerankq.core.broker import RabbitDepths
from rerankq.core.constants import DEFAULT_LANE, admitted_key, queue_keys, queue_name
from rerankq.core.live_workers import MEMO_S, AsyncLiveWorkers, WorkerPresence, serving
from rerankq.core.settings import Settings
from rerankq.errors import NoWorkers, QueueFull

# KEYS: the queue's lists, then its reservations. ARGV: the limit, the reservations' TTL (ms).
# Returns the depth before this job, or -(depth + 1) when the queue is full (nothing reserved).
RESERVE = """
local n = #KEYS - 1
local depth = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
for i = 1, n do
  depth = depth + redis.call('LLEN', KEYS[i])
end
if depth >= tonumber(ARGV[1]) then
  return -1 - depth
end
redis.call('INCR', KEYS[n + 1])
redis.call('PEXPIRE', KEYS[n + 1], ARGV[2])
return depth
"""
RELEASE = """
if redis.call('DECR', KEYS[1]) <= 0 then
  redis.call('DEL', KEYS[1])
end
"""
RESERVATION_TTL_MS = 30_000  # far longer than a send; bounds what a gateway dying mid-send holds


class Admission:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._workers = AsyncLiveWorkers(redis, settings.presence_interval_s)
        self._depths: dict[str, tuple[float, int]] = {}
        self._rabbit = RabbitDepths(settings) if settings.on_rabbitmq else None

    async def workers(self) -> list[WorkerPresence]:
        return await self._workers.read()

    async def served_before(self) -> set[str]:
        return await self._workers.served_before()

    @asynccontextmanager
    async def admitted(self, model: str) -> AsyncIterator[None]:
        """A place on the model's lane for the block's send. Refuses work no one will take
        (NoWorkers) or that would queue past the lane's limit (QueueFull)."""
        lane = DEFAULT_LANE
        if not serving(await self.workers(), model, lane):
            raise NoWorkers(model, lane, is_default=model == self._settings.default_model)
        queue, limit = queue_name(model, lane), self._settings.max_queue_depth
        reserve = self._reserve_on_rabbitmq if self._rabbit is not None else self._reserve_on_redis
        depth = await reserve(queue, limit)
        if depth < 0:
            raise QueueFull(queue, -depth - 1, limit, self._settings.retry_after_s)
        try:
            yield
        finally:
            await self._release(queue)

    async def _reserve_on_redis(self, queue: str, limit: int) -> int:
        keys = [*queue_keys(queue), admitted_key(queue)]
        return int(await self._redis.eval(RESERVE, len(keys), *keys, str(limit), str(RESERVATION_TTL_MS)))  # type: ignore[misc]

    async def _reserve_on_rabbitmq(self, queue: str, limit: int) -> int:
        """RabbitMQ's count cannot join a Redis script, so the place is reserved first and the
        broker asked after: every send in flight is then counted by whoever comes later, in the
        reservations (not yet released) or in the broker's count (a send returns once the broker
        confirms it holds the job; its place is released only then). A send may be counted
        twice for an instant, which refuses early, never late."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(admitted_key(queue))
        pipe.pexpire(admitted_key(queue), RESERVATION_TTL_MS)
        reserved, _ = await pipe.execute()
        try:
            depth = int(reserved) - 1 + (await self._rabbit_waiting([queue]))[0]
        except BaseException:
            await self._release(queue)
            raise
        if depth >= limit:
            await self._release(queue)
            return -1 - depth
        return depth

    async def _release(self, queue: str) -> None:
        await self._redis.eval(RELEASE, 1, admitted_key(queue))  # type: ignore[misc]

    async def _rabbit_waiting(self, queues: list[str]) -> list[int]:
        assert self._rabbit is not None
        return await asyncio.to_thread(self._rabbit.waiting, queues)

    async def queue_depth(self, queue: str) -> int:
        """Messages waiting in ``queue`` (reserved jobs not included): on Redis over all its
        priority lists, on RabbitMQ as the broker counts them."""
        read_at, depth = self._depths.get(queue, (float("-inf"), 0))
        if time.monotonic() - read_at > MEMO_S:
            if self._rabbit is not None:
                depth = (await self._rabbit_waiting([queue]))[0]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for key in queue_keys(queue):
                    pipe.llen(key)
                depth = sum(await pipe.execute())
            self._depths[queue] = (time.monotonic(), depth)
        return depth

    def close(self) -> None:
        if self._rabbit is not None:
            self._rabbit.close()
