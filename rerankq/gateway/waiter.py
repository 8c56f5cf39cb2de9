"""Wait for many jobs' results at once without a thread or a connection per waiting request.

Celery's Redis backend publishes each finished job's meta on a channel named after the job's
result key. The waiter holds one pub/sub connection for the whole process: a request subscribes
to its job's channel, reads the key once (a result stored before the subscription took hold is
not missed), then sleeps on a future. As a safety net against a lost message (e.g. across a
Redis reconnect) it also reads every pending key with one MGET each poll interval.
Celery's blocking ``AsyncResult.get`` cannot do this: it parks the calling thread.
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
from rerankq.producer.jobs import POLL_S, Meta, decode_meta, is_ready

log = logging.getLogger("rerankq.gateway")


class ResultWaiter:
    def __init__(self, app: Celery, redis: aioredis.Redis, poll_s: float = POLL_S) -> None:
        self._backend = app.backend
        self._redis = redis
        self._poll_s = poll_s
        self._pubsub = redis.pubsub()
        self._waiting: dict[str, set[asyncio.Future[Meta]]] = {}  # result key -> futures
        self._reader: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

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
        key = self._backend.get_key_for_task(job_id).decode()
        future: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        futures = self._waiting.setdefault(key, set())
        futures.add(future)
        WAITING.inc()
        try:
            if len(futures) == 1:
                await self._pubsub.subscribe(key)
            meta = await self.read(job_id)
            if is_ready(meta):
                return meta
            return await asyncio.wait_for(future, timeout)
        finally:
            WAITING.dec()
            await self._forget(key, future)

    async def read(self, job_id: str) -> Meta | None:
        """The job's meta as stored now, or None (queued, or unknown)."""
        raw = await self._redis.get(self._backend.get_key_for_task(job_id))
        return decode_meta(self._backend, raw)

    async def _forget(self, key: str, future: asyncio.Future[Meta]) -> None:
        futures = self._waiting.get(key, set())
        futures.discard(future)
        if not futures:
            self._waiting.pop(key, None)
            with contextlib.suppress(RedisError):
                await self._pubsub.unsubscribe(key)

    async def _read_forever(self) -> None:
        while True:
            try:
                await self._read_messages()
                await self._poll_pending()
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
            if message is not None and message["type"] == "message":
                self._settle(_text(message["channel"]), decode_meta(self._backend, message["data"]))

    async def _poll_pending(self) -> None:
        keys = list(self._waiting)
        if not keys:
            return
        for key, raw in zip(keys, await self._redis.mget(keys), strict=True):
            if raw:
                self._settle(key, decode_meta(self._backend, raw))

    def _settle(self, key: str, meta: Meta | None) -> None:
        if not is_ready(meta):
            return
        for future in self._waiting.get(key, set()):
            if not future.done():
                future.set_result(meta)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
