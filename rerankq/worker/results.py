"""Celery's Redis result backend, where the first final result of a job stands.

A job can run twice: its worker froze, a sweeper gave it to another worker (rerankq.worker.recovery),
and the frozen one woke and finished too. Both compute the same scores, but the late copy must
not overwrite the stored answer (its timings and device differ) nor, worse, put a finished job
back to STARTED. Celery stores every state with a plain SET; here a state is stored only while
no final one (SUCCESS, FAILURE, REVOKED) is there, checked and written in one Lua script. It
overrides ``set``, the storage method of Celery's key/value backends, with the parameters of
Celery 5.7 (``expires`` came in 5.7; older ones never pass it). A final state's store is a span
(``rerankq.result_publish``) when the worker traces.
A cancel from a producer (which writes REVOKED through Celery's own backend) still wins over a
worker that starts the job later: the worker's STARTED and result are dropped.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend

from rerankq.core import tracing
from rerankq.core.redis_clients import is_sentinel

# KEYS: the result key. ARGV: value, seconds to live (0: none). Returns 1 when stored.
SET_UNLESS_FINAL = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' then
    local status = meta.status
    if status == 'SUCCESS' or status == 'FAILURE' or status == 'REVOKED' then
      return 0
    end
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class _FirstResultStands:
    def store_result(self, task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> Any:
        """Celery's public store, with a span for a final state (the job's answer going out)."""
        final = state in states.READY_STATES
        attributes = {"rerankq.job_id": task_id, "rerankq.state": state}
        with tracing.span("rerankq.result_publish", attributes) if final else nullcontext():
            return super().store_result(task_id, result, state, *args, **kwargs)  # type: ignore[misc]

    def set(self, key: str, value: Any, expires: Any = None, **retry_policy: Any) -> Any:
        # ensure: Celery's retries on a lost connection, as its own set does
        return self.ensure(self._set_unless_final, (key, value, expires), **retry_policy)  # type: ignore[attr-defined]

    def _set_unless_final(self, key: str, value: Any, expires: Any) -> None:
        expires = self.expires if expires is None else expires  # type: ignore[attr-defined]
        seconds = int(expires.total_seconds() if hasattr(expires, "total_seconds") else expires or 0)
        self.client.eval(SET_UNLESS_FINAL, 1, key, value, seconds)  # type: ignore[attr-defined]


class FirstResultBackend(_FirstResultStands, RedisBackend):  # type: ignore[misc]
    pass


class FirstResultSentinelBackend(_FirstResultStands, SentinelBackend):  # type: ignore[misc]
    pass


def backend_url(redis_url: str) -> str:
    """The worker's ``result_backend``: Celery's ``Class+url`` form selects these classes."""
    kind = "FirstResultSentinelBackend" if is_sentinel(redis_url) else "FirstResultBackend"
    return f"{__name__}:{kind}+{redis_url}"
