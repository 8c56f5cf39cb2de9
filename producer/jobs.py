"""Job handles: follow one job by id, from the process that submitted it or any other."""

from __future__ import annotations

import enum
import logging
import time
from typing import Any, TypeGuard

import celery.exceptions
import redis
import redis.asyncio as aioredis
from celery import Celery, states
from celery.result import AsyncResult

from producer.constants import STATE_REROUTED
from producer.contract import RerankResult
from producer.errors import BrokerUnavailable, JobCancelled, JobFailed, JobTimeout

log = logging.getLogger("rerankq.jobs")


class JobStatus(enum.StrEnum):
    PENDING = "pending"  # queued (or unknown id: Celery cannot tell the two apart)
    STARTED = "started"  # a worker is scoring it
    WAITING_FOR_CPU = "waiting_for_cpu"  # moved to the cpu lane after GPU out-of-memory
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # cancelled before a worker started it


_STATUS_OF_STATE = {
    states.STARTED: JobStatus.STARTED,
    STATE_REROUTED: JobStatus.WAITING_FOR_CPU,
    states.SUCCESS: JobStatus.SUCCEEDED,
    states.FAILURE: JobStatus.FAILED,
    states.REVOKED: JobStatus.CANCELLED,
}


def status_of(state: str) -> JobStatus:
    return _STATUS_OF_STATE.get(state, JobStatus.PENDING)


def waiting_hint(info: Any) -> str:
    """Why a job is still waiting, when its worker said so (a job moved to the cpu lane)."""
    if not isinstance(info, dict) or info.get("lane") != "cpu":
        return ""
    model = info.get("model", "?")
    return (
        f"the job is waiting for a CPU worker of model {model} on queue {info.get('queue')} "
        f"({info.get('reason', 'out of memory on the GPU')}); start one with "
        f"`rerankq worker --model {model} --device cpu`"
    )


def outcome(job_id: str, state: str, payload: Any) -> RerankResult:
    """Turn a finished job's backend state into a result, or raise ``JobFailed`` with the worker's reason."""
    if state == states.SUCCESS:
        return RerankResult.model_validate(payload)
    if state == states.REVOKED:
        raise JobCancelled(job_id)
    reason = f"{type(payload).__name__}: {payload}" if isinstance(payload, BaseException) else str(payload)
    raise JobFailed(job_id, reason)


def outcome_of_meta(backend: Any, job_id: str, meta: dict[str, Any]) -> RerankResult:
    """``outcome`` for a finished job's meta as read from the result backend (failures arrive
    serialized; Celery's backend turns them back into exceptions)."""
    payload = meta["result"]
    if meta["status"] != states.SUCCESS:
        payload = backend.exception_to_python(payload)
    return outcome(job_id, meta["status"], payload)


def is_ready(meta: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    return meta is not None and meta["status"] in states.READY_STATES


class JobHandle:
    """A submitted job. ``result()`` blocks until the worker answers or the timeout passes."""

    def __init__(self, app: Celery, job_id: str) -> None:
        self.id = job_id
        self._async_result = AsyncResult(job_id, app=app)

    def status(self) -> JobStatus:
        return status_of(self._async_result.state)

    def result(self, timeout: float = 60.0) -> RerankResult:
        try:
            payload = self._async_result.get(timeout=timeout, propagate=False)
        except celery.exceptions.TimeoutError as e:
            error = JobTimeout(self.id, timeout, self.status(), waiting_hint(self._async_result.info))
            self._stop_listening()
            raise error from e
        except redis.RedisError as e:
            raise BrokerUnavailable(f"waiting for job {self.id}", type(e).__name__) from e
        return outcome(self.id, self._async_result.state, payload)

    def _stop_listening(self) -> None:
        """Celery's backend keeps a waited-for result (and its pub/sub subscription) until it is
        ready; after a timeout nobody may ask again, so a long-lived client would collect them.
        A later ``result()`` subscribes afresh."""
        try:
            self._async_result.backend.remove_pending_result(self._async_result)
        except (redis.RedisError, RuntimeError) as e:  # Redis gone: the subscription went with it
            log.debug("could not unsubscribe from job %s: %s", self.id, e)

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r})"


class AsyncJobHandle:
    """The asyncio twin of ``JobHandle``: waiting never blocks the event loop.

    Celery's result API is blocking, so this reads Celery's own result key and listens on the
    channel Celery's Redis backend publishes to when a job finishes, through redis.asyncio;
    key naming and decoding stay Celery's (``backend.get_key_for_task`` / ``decode_result``).
    """

    def __init__(self, app: Celery, redis: aioredis.Redis, job_id: str) -> None:
        self.id = job_id
        self._backend = app.backend
        self._redis = redis
        self._key = self._backend.get_key_for_task(job_id)

    async def status(self) -> JobStatus:
        meta = await self._read_meta()
        return status_of(meta["status"]) if meta else JobStatus.PENDING

    async def result(self, timeout: float = 60.0) -> RerankResult:
        deadline = time.monotonic() + timeout
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(self._key)  # subscribe first, then read: no lost wake-up
            meta = await self._read_meta()
            while not is_ready(meta):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    status = status_of(meta["status"]) if meta else JobStatus.PENDING
                    raise JobTimeout(self.id, timeout, status, waiting_hint(meta["result"] if meta else None))
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, 1.0))
                meta = self._decode(message["data"]) if message else await self._read_meta()
        assert meta is not None
        return outcome_of_meta(self._backend, self.id, meta)

    async def _read_meta(self) -> dict[str, Any] | None:
        raw = await self._redis.get(self._key)
        return self._decode(raw) if raw else None

    def _decode(self, raw: bytes) -> dict[str, Any]:
        meta: dict[str, Any] = self._backend.decode_result(raw)
        return meta

    def __repr__(self) -> str:
        return f"AsyncJobHandle(id={self.id!r})"
