"""A key's share of a lane's queue: the jobs of one key that wait in a queue at once are capped
(``queued_jobs``, by default ``RERANKQ_KEY_QUEUE_SHARE`` of ``RERANKQ_MAX_QUEUE_DEPTH``), so one
app's burst cannot fill the queue every other app shares.

Each key keeps a sorted set per queue of its jobs by submit time. A job stops waiting once a
worker starts it: Celery then stores its state (``task_track_started``), so a job whose result-
backend key exists has left the queue. One Lua script drops those (and any older than the
visibility timeout), counts the rest and adds the new job below the cap, or refuses: atomic, so
gateway replicas share the cap exactly. The script reads the result keys it derives from the job
ids, which a Redis Cluster would refuse; rerankq's Redis is one primary (or Sentinel's).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from rerankq.core.constants import queued_by_key
from rerankq.core.settings import Settings
from rerankq.gateway.keys import ApiKey
from rerankq.gateway.rate_limits import RateLimited

# KEYS: the key's set for the queue. ARGV: job id, now, cap, drop-before time, result key prefix,
# the set's TTL (ms). Returns the jobs waiting before this one, or -(waiting + 1) when at the cap.
HOLD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
local waiting = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[5] .. id) == 1 then
    redis.call('ZREM', KEYS[1], id)
  else
    waiting = waiting + 1
  end
end
if waiting >= tonumber(ARGV[3]) then
  return -1 - waiting
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return waiting
"""


class KeyQueue:
    def __init__(self, redis: aioredis.Redis, settings: Settings, result_key_prefix: str) -> None:
        self._redis = redis
        self._settings = settings
        self._result_key_prefix = result_key_prefix
        self._hold = redis.register_script(HOLD)

    @asynccontextmanager
    async def holding(self, key: ApiKey, queue: str, job_id: str) -> AsyncIterator[None]:
        """A place for ``job_id`` among the key's waiting jobs, for the block's send (given back
        if the send fails); RateLimited at the cap. Keys without a cap pass."""
        cap = key.limits.queued_jobs
        if cap is None:
            yield
            return
        now, horizon_s = time.time(), self._settings.visibility_timeout_s
        args: list[str | float] = [job_id, now, cap, now - horizon_s, self._result_key_prefix, horizon_s * 1000]
        waiting = int(await self._hold(keys=[queued_by_key(key.name, queue)], args=args))
        if waiting < 0:
            raise RateLimited(key.name, f"jobs waiting in {queue}", cap, self._settings.retry_after_s)
        try:
            yield
        except BaseException:
            await self._redis.zrem(queued_by_key(key.name, queue), job_id)
            raise
