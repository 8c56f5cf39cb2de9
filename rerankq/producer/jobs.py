"""Job handles: follow one job by id, from the process that submitted it or any other."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeGuard

import redis
import redis.asyncio as aioredis
from celery import Celery, states

from rerankq.errors import BrokerUnavailable, JobCancelled, JobFailed, JobTimeout
from rerankq.producer.constants import STATE_REROUTED
from rerankq.producer.contract import RerankResult, read_result

Meta = dict[str, Any]  # a job's state as Celery's backend stores it: status, result, ...
POLL_S = 1.0  # the longest a waiter relies on pub/sub alone before reading the key again


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


def status_of_meta(meta: Meta | None) -> JobStatus:
    """A stored job's status; nothing stored yet is pending."""
    return status_of(meta["status"]) if meta else JobStatus.PENDING


@contextmanager
def broker_errors(action: str) -> Iterator[None]:
    """Redis errors while following a job surface as ``BrokerUnavailable`` naming the action."""
    try:
        yield
    except redis.RedisError as e:
        raise BrokerUnavailable(action, type(e).__name__) from e


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
        return read_result(payload)
    if state == states.REVOKED:
        raise JobCancelled(job_id)
    reason = f"{type(payload).__name__}: {payload}" if isinstance(payload, BaseException) else str(payload)
    raise JobFailed(job_id, reason)


def outcome_of_meta(backend: Any, job_id: str, meta: Meta) -> RerankResult:
    """``outcome`` for a finished job's meta as read from the result backend (failures arrive
    serialized; Celery's backend turns them back into exceptions)."""
    payload = meta["result"]
    if meta["status"] != states.SUCCESS:
        payload = backend.exception_to_python(payload)
    return outcome(job_id, meta["status"], payload)


def is_ready(meta: Meta | None) -> TypeGuard[Meta]:
    return meta is not None and meta["status"] in states.READY_STATES


def decode_meta(backend: Any, raw: bytes | None) -> Meta | None:
    """A result key's or message's value as Celery's backend stored it (None: nothing stored)."""
    meta: Meta | None = backend.decode_result(raw) if raw else None
    return meta


def settle(backend: Any, job_id: str, timeout: float, meta: Meta | None) -> RerankResult:
    """A waited-for job's result, its failure, or ``JobTimeout`` when its meta is not final."""
    if not is_ready(meta):
        raise JobTimeout(job_id, timeout, status_of_meta(meta), waiting_hint(meta["result"] if meta else None))
    return outcome_of_meta(backend, job_id, meta)


class JobHandle:
    """A submitted job. ``result()`` blocks until the worker answers or the timeout passes.

    Celery's ``AsyncResult.get`` waits on the result channel's pub/sub message alone: a message
    it misses (seen in CI: the job stored SUCCESS, ``get()`` waited out its 600 s) is never
    noticed. This handle subscribes, reads the result key, and reads it again at least every
    ``POLL_S`` while it waits, as the gateway's waiter and the bulk watcher do. Key naming and
    decoding stay Celery's (``backend.get_key_for_task`` / ``decode_result``).
    """

    def __init__(self, app: Celery, job_id: str) -> None:
        self.id = job_id
        self._backend = app.backend
        self._redis = app.backend.client
        self._key = self._backend.get_key_for_task(job_id)

    def status(self) -> JobStatus:
        with broker_errors(f"reading job {self.id}"):
            return status_of_meta(self._read_meta())

    def result(self, timeout: float = 60.0) -> RerankResult:
        with broker_errors(f"waiting for job {self.id}"):
            meta = self._wait(time.monotonic() + timeout)
        return settle(self._backend, self.id, timeout, meta)

    def _wait(self, deadline: float) -> Meta | None:
        meta = self._read_meta()
        if is_ready(meta):  # finished already (or answered from the cache): no subscription
            return meta
        with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            pubsub.subscribe(self._key)  # subscribe first, then read: no lost wake-up
            meta = self._read_meta()
            while not is_ready(meta) and (remaining := deadline - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=min(remaining, POLL_S))
                meta = decode_meta(self._backend, message["data"]) if message else self._read_meta()
        return meta

    def _read_meta(self) -> Meta | None:
        return decode_meta(self._backend, self._redis.get(self._key))

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r})"


class AsyncJobHandle:
    """The asyncio twin of ``JobHandle``, waiting the same way through redis.asyncio: it never
    blocks the event loop (Celery's result API is blocking)."""

    def __init__(self, app: Celery, redis: aioredis.Redis, job_id: str) -> None:
        self.id = job_id
        self._backend = app.backend
        self._redis = redis
        self._key = self._backend.get_key_for_task(job_id)

    async def status(self) -> JobStatus:
        with broker_errors(f"reading job {self.id}"):
            return status_of_meta(await self._read_meta())

    async def result(self, timeout: float = 60.0) -> RerankResult:
        with broker_errors(f"waiting for job {self.id}"):
            meta = await self._wait(time.monotonic() + timeout)
        return settle(self._backend, self.id, timeout, meta)

    async def _wait(self, deadline: float) -> Meta | None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(self._key)  # subscribe first, then read: no lost wake-up
            meta = await self._read_meta()
            while not is_ready(meta) and (remaining := deadline - time.monotonic()) > 0:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, POLL_S))
                meta = decode_meta(self._backend, message["data"]) if message else await self._read_meta()
        return meta

    async def _read_meta(self) -> Meta | None:
        return decode_meta(self._backend, await self._redis.get(self._key))

    def __repr__(self) -> str:
        return f"AsyncJobHandle(id={self.id!r})"
