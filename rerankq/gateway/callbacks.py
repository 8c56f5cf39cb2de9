"""Job callbacks: POST a finished job's state to the URL its submitter gave, signed, with retries.

Registrations live in Redis (a hash of details and a sorted set of due times), so any gateway
process can deliver any job's callback and a restarted gateway picks up where another stopped.
A gateway claims a due callback by removing it from the sorted set (only one ZREM wins) and at
once re-adds it a lease later: a gateway that dies mid-delivery leaves it to another. Delivery is
therefore at least once; receivers deduplicate by the ``X-Rerankq-Job-Id`` header.

Signature: ``X-Rerankq-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``;
receivers recompute it, compare in constant time and reject old timestamps (replays).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import redis.asyncio as aioredis

from rerankq.core.constants import CALLBACKS_DUE_KEY, CALLBACKS_KEY
from rerankq.core.settings import Settings
from rerankq.errors import InvalidRequest, JobNotFound
from rerankq.gateway.callback_targets import check_callback_url
from rerankq.gateway.metrics import CALLBACKS

log = logging.getLogger("rerankq.gateway")

POLL_S = 0.5  # how often due callbacks are claimed, and how soon an unfinished job is checked again
LEASE_S = 60.0  # a claimed callback returns to the due set after this, should its gateway die
MAX_BACKOFF_S = 60.0

# The job's state as GET /v1/jobs/{id} shows it, or None while it is not finished.
FinishedBody = Callable[[str], Awaitable[bytes | None]]


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, max_age_s: float = 300) -> bool:
    """What a receiver does (for tests and as reference for users)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    fresh = abs(time.time() - timestamp) <= max_age_s
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), header)


def retryable(status: int) -> bool:
    """A 4xx other than 408/429 says the receiver rejects this delivery; retrying will not help."""
    return not (400 <= status < 500) or status in (408, 429)


class CallbackDispatcher:
    def __init__(self, redis: aioredis.Redis, settings: Settings, finished_body: FinishedBody) -> None:
        assert settings.callback_secret is not None
        self._redis = redis
        self._secret = settings.callback_secret.get_secret_value().encode()
        self._attempts = settings.callback_attempts
        self._timeout_s = settings.callback_timeout_s
        self._finished_body = finished_body
        self._allow_private = settings.callback_allow_private
        self._http = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)
        self._task: asyncio.Task[None] | None = None

    async def register(self, job_id: str, url: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(CALLBACKS_KEY, job_id, json.dumps({"url": url, "attempts": 0}))
        pipe.zadd(CALLBACKS_DUE_KEY, {job_id: time.time()})
        await pipe.execute()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="rerankq-callbacks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._http.aclose()

    async def _run_forever(self) -> None:
        while True:
            try:
                for job_id in await self._claim_due():
                    await self._handle(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: try again next tick; registrations stay in Redis
                log.warning("callback dispatcher: %s", e)
            await asyncio.sleep(POLL_S)

    async def _claim_due(self) -> list[str]:
        now = time.time()
        due = await self._redis.zrangebyscore(CALLBACKS_DUE_KEY, "-inf", now, start=0, num=100)
        claimed = []
        for raw in due:
            if await self._redis.zrem(CALLBACKS_DUE_KEY, raw):
                await self._redis.zadd(CALLBACKS_DUE_KEY, {raw: now + LEASE_S})
                claimed.append(raw.decode())
        return claimed

    async def _handle(self, job_id: str) -> None:
        raw = await self._redis.hget(CALLBACKS_KEY, job_id)  # type: ignore[misc]  # redis-py: "Awaitable | T"
        if raw is None:
            await self._redis.zrem(CALLBACKS_DUE_KEY, job_id)
            return
        registration = json.loads(raw)
        try:
            body = await self._finished_body(job_id)
        except JobNotFound:  # its result expired: nothing left to deliver
            await self._forget(job_id)
            return
        if body is None:
            await self._reschedule(job_id, POLL_S)
            return
        status = await self._post(job_id, registration["url"], body)
        if status is not None and 200 <= status < 300:
            CALLBACKS.labels("delivered").inc()
            await self._forget(job_id)
            return
        attempts = registration["attempts"] + 1
        if attempts >= self._attempts or (status is not None and not retryable(status)):
            CALLBACKS.labels("failed").inc()
            log.warning("callback of job %s abandoned after %d attempts (last status %s)", job_id, attempts, status)
            await self._forget(job_id)
            return
        CALLBACKS.labels("retried").inc()
        attempted = json.dumps(registration | {"attempts": attempts})
        await self._redis.hset(CALLBACKS_KEY, job_id, attempted)  # type: ignore[misc]  # redis-py: "Awaitable | T"
        await self._reschedule(job_id, min(2.0**attempts, MAX_BACKOFF_S))

    async def _post(self, job_id: str, url: str, body: bytes) -> int | None:
        headers = {
            "Content-Type": "application/json",
            "X-Rerankq-Job-Id": job_id,
            "X-Rerankq-Signature": sign(self._secret, int(time.time()), body),
        }
        try:
            await check_callback_url(url, self._allow_private)  # again: the name may point elsewhere now
            response = await self._http.post(url, content=body, headers=headers)
        except InvalidRequest as e:
            log.warning("callback of job %s refused: %s", job_id, e)
            return 403  # not retryable: the callback is abandoned
        except httpx.HTTPError as e:
            log.info("callback of job %s to %s failed: %s", job_id, url, type(e).__name__)
            return None
        return response.status_code

    async def _reschedule(self, job_id: str, delay_s: float) -> None:
        await self._redis.zadd(CALLBACKS_DUE_KEY, {job_id: time.time() + delay_s})

    async def _forget(self, job_id: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(CALLBACKS_KEY, job_id)
        pipe.zrem(CALLBACKS_DUE_KEY, job_id)
        await pipe.execute()
