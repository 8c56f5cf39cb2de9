"""Wait for many jobs' results at once without a thread or a connection per waiting request.

The protocol is ``producer.watched_keys``'s; this is its asyncio driver. One pub/sub connection serves
the whole process: a request registers a future for its job, the reader task settles futures
from messages and from one MGET of every waited key each poll interval. Celery's blocking
``AsyncResult.get`` cannot do this: it parks the calling thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import redis.asyncio as aioredis
from celery import Celery
from redis.exceptions import RedisError

from rerankq.gateway.metrics import WAITING
from rerankq.producer.job_handles import POLL_S, decode_meta, is_ready
from rerankq.producer.job_status import Meta
from rerankq.producer.watched_keys import WatchedKeys

log = logging.getLogger("rerankq.gateway")


class ResultWaiter:
    def __init__(self, app: Celery, redis: aioredis.Redis, poll_s: float = POLL_S) -> None:
        self._backend = app.backend
        self._redis = redis
        self._poll_s = poll_s
        self._pubsub = redis.pubsub()
        self._watched = WatchedKeys(self._backend)
        self._futures: dict[str, set[asyncio.Future[Meta]]] = {}  # job id -> its waiting requests
        self._reader: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(len(futures) for futures in self._futures.values())

    async def start(self) -> None:
        # a private channel keeps the connection subscribed while no request waits
        await self._pubsub.subscribe(f"rerankq:gateway:{uuid.uuid4()}")
        self._reader = asyncio.create_task(self._read_forever(), name="rerankq-result-waiter")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def wait(self, job_id: str, timeout: float) -> Meta:
        """The job's final meta (status, result). Raises ``TimeoutError`` when it is not ready in time."""
        future: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        futures = self._futures.setdefault(job_id, set())
        futures.add(future)
        WAITING.inc()
        try:
            if len(futures) == 1:
                await self._pubsub.subscribe(self._watched.add(job_id))
            meta = await self.read(job_id)
            if is_ready(meta):
                return meta
            return await asyncio.wait_for(future, timeout)
        finally:
            WAITING.dec()
            await self._forget(job_id, future)

    async def read(self, job_id: str) -> Meta | None:
        """The job's meta as stored now, or None (queued, or unknown)."""
        return decode_meta(self._backend, await self._redis.get(self._watched.key_of(job_id)))

    async def _forget(self, job_id: str, future: asyncio.Future[Meta]) -> None:
        futures = self._futures.get(job_id, set())
        futures.discard(future)
        if not futures:
            self._futures.pop(job_id, None)
            keys = self._watched.remove([job_id])
            with contextlib.suppress(RedisError):
                await self._pubsub.unsubscribe(*keys)

    async def _read_forever(self) -> None:
        while True:
            try:
                await self._read_messages()
                await self._poll_watched()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never let the reader die: every waiting request depends on it
                log.warning("result waiter: %s; retrying", e)
                await asyncio.sleep(self._poll_s)

    async def _read_messages(self) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self._poll_s
        while (remaining := until - loop.time()) > 0:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            self._settle(self._watched.from_message(message))

    async def _poll_watched(self) -> None:
        if keys := self._watched.keys():
            self._settle(self._watched.from_values(keys, await self._redis.mget(keys)))

    def _settle(self, finished: list[tuple[str, Meta]]) -> None:
        for job_id, meta in finished:
            for future in self._futures.get(job_id, set()):
                if not future.done():
                    future.set_result(meta)
