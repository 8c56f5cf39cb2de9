"""Job handles: follow one job by id, from the process that submitted it or any other."""

from __future__ import annotations

import time
from typing import Any, TypeGuard

import redis.asyncio as aioredis
from celery import Celery, states

from rerankq.core import tracing
from rerankq.core.constants import job_key
from rerankq.core.contract import RerankResult, read_result
from rerankq.core.live_workers import last_consumed, last_consumed_async, read_live, read_live_async
from rerankq.core.redis_clients import broker_errors
from rerankq.core.settings import Settings
from rerankq.errors import JobCancelled, JobFailed, JobTimeout
from rerankq.producer.job_ledger import JobRecord, no_worker_hint, not_found
from rerankq.producer.job_status import JobStatus, Meta, status_of_meta
from rerankq.producer.subscriptions import ThreadSubscriptions, for_channel

POLL_S = 1.0  # the longest a waiter relies on pub/sub alone before reading the key again


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


def answered(result: RerankResult) -> RerankResult:
    """A result, once the current span (a wait) links to the worker's span that made it."""
    tracing.link_current_to(result.traceparent)
    return result


def settle(backend: Any, job_id: str, timeout: float, meta: Meta | None, hint: str = "") -> RerankResult:
    """A waited-for job's result, its failure, or ``JobTimeout`` (with why it waits, when known)
    when its meta is not final."""
    if not is_ready(meta):
        raise JobTimeout(job_id, timeout, status_of_meta(meta), hint or waiting_hint(meta["result"] if meta else None))
    return outcome_of_meta(backend, job_id, meta)


class JobHandle:
    """A submitted job. ``result()`` blocks until the worker answers or the timeout passes.

    Celery's ``AsyncResult.get`` waits on the result channel's pub/sub message alone: a message
    it misses (seen in CI: the job stored SUCCESS, ``get()`` waited out its 600 s) is never
    noticed. This handle subscribes, reads the result key, and reads it again at least every
    ``POLL_S`` while it waits, as the gateway's waiter and the bulk watcher do. Key naming and
    decoding stay Celery's (``backend.get_key_for_task`` / ``decode_result``). An id with neither
    a result nor a ledger record raises ``JobNotFound`` at once. The subscription is on this
    thread's kept pub/sub connection (``rerankq.producer.subscriptions``).
    """

    def __init__(self, app: Celery, job_id: str, settings: Settings, subscriptions: ThreadSubscriptions) -> None:
        self.id = job_id
        self._backend = app.backend
        self._redis = app.backend.client
        self._key = self._backend.get_key_for_task(job_id)
        self._settings = settings
        self._subscriptions = subscriptions  # the client's: it closes them

    def status(self) -> JobStatus:
        with broker_errors(f"reading job {self.id}", self._settings.redis_url):
            meta = self._read_meta()
            if meta is None:
                self._record()
            return status_of_meta(meta)

    def result(self, timeout: float = 60.0) -> RerankResult:
        with tracing.span("rerankq.wait", {"rerankq.job_id": self.id}):
            with broker_errors(f"waiting for job {self.id}", self._settings.redis_url):
                meta = self._wait(time.monotonic() + timeout)
                hint = "" if is_ready(meta) or meta is not None else self._idle_hint()
            return answered(settle(self._backend, self.id, timeout, meta, hint))

    def _wait(self, deadline: float) -> Meta | None:
        with self._subscriptions.subscribed(self._key) as pubsub:  # subscribe first, then read: no lost wake-up
            meta, record = self._read_meta_and_record()
            if meta is None and record is None:
                raise not_found(self.id, self._settings.result_ttl_s)
            polled = time.monotonic()
            while not is_ready(meta) and (remaining := deadline - time.monotonic()) > 0:
                data = for_channel(pubsub.get_message(timeout=min(remaining, POLL_S)), self._key)
                if data is not None:
                    meta = decode_meta(self._backend, data)
                elif time.monotonic() - polled >= POLL_S:  # the safety net: read the key again
                    meta, polled = self._read_meta(), time.monotonic()
        return meta

    def _read_meta_and_record(self) -> tuple[Meta | None, JobRecord | None]:
        """The result and the ledger record, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._key)
        pipe.get(job_key(self.id))
        raw_meta, raw_record = pipe.execute()
        return decode_meta(self._backend, raw_meta), JobRecord.parse(raw_record)

    def _record(self) -> JobRecord:
        record = JobRecord.parse(self._redis.get(job_key(self.id)))
        if record is None:
            raise not_found(self.id, self._settings.result_ttl_s)
        return record

    def _idle_hint(self) -> str:
        record = self._record()
        workers = read_live(self._redis, self._settings.presence_interval_s)
        return no_worker_hint(record, workers, last_consumed(self._redis, record.model, record.lane))

    def _read_meta(self) -> Meta | None:
        return decode_meta(self._backend, self._redis.get(self._key))

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r})"


class AsyncJobHandle:
    """The asyncio twin of ``JobHandle``, waiting the same way through redis.asyncio: it never
    blocks the event loop (Celery's result API is blocking)."""

    def __init__(self, app: Celery, redis: aioredis.Redis, job_id: str, settings: Settings) -> None:
        self.id = job_id
        self._backend = app.backend
        self._redis = redis
        self._key = self._backend.get_key_for_task(job_id)
        self._settings = settings

    async def status(self) -> JobStatus:
        with broker_errors(f"reading job {self.id}", self._settings.redis_url):
            meta = await self._read_meta()
            if meta is None:
                await self._record()
            return status_of_meta(meta)

    async def result(self, timeout: float = 60.0) -> RerankResult:
        with tracing.span("rerankq.wait", {"rerankq.job_id": self.id}):
            with broker_errors(f"waiting for job {self.id}", self._settings.redis_url):
                meta = await self._wait(time.monotonic() + timeout)
                hint = "" if is_ready(meta) or meta is not None else await self._idle_hint()
            return answered(settle(self._backend, self.id, timeout, meta, hint))

    async def _wait(self, deadline: float) -> Meta | None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(self._key)  # subscribe first, then read: no lost wake-up
            meta = await self._read_meta()
            if meta is None:
                await self._record()  # JobNotFound for an id never submitted
            while not is_ready(meta) and (remaining := deadline - time.monotonic()) > 0:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, POLL_S))
                meta = decode_meta(self._backend, message["data"]) if message else await self._read_meta()
        return meta

    async def _record(self) -> JobRecord:
        record = JobRecord.parse(await self._redis.get(job_key(self.id)))
        if record is None:
            raise not_found(self.id, self._settings.result_ttl_s)
        return record

    async def _idle_hint(self) -> str:
        record = await self._record()
        workers = await read_live_async(self._redis, self._settings.presence_interval_s)
        seen = await last_consumed_async(self._redis, record.model, record.lane)
        return no_worker_hint(record, workers, seen)

    async def _read_meta(self) -> Meta | None:
        return decode_meta(self._backend, await self._redis.get(self._key))

    def __repr__(self) -> str:
        return f"AsyncJobHandle(id={self.id!r})"
