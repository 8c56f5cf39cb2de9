"""The asyncio producer SDK for web apps: same methods as ``RerankClient``, as coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from celery import Celery
from typing_extensions import Unpack

from rerankq.core.contract import JobOptions, RankedDocument, RerankJob
from rerankq.core.redis_clients import connect_async
from rerankq.core.settings import Settings
from rerankq.producer.client import RerankClient
from rerankq.producer.job_handles import AsyncJobHandle
from rerankq.producer.job_status import JobStatus


class AsyncRerankClient:
    """Waiting for results uses redis.asyncio; publishing (one short LPUSH through kombu, which
    has no asyncio API) runs in a worker thread, so the event loop never blocks."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None) -> None:
        self._sync = RerankClient(redis_url, settings=settings)
        self.settings = self._sync.settings
        self._redis = connect_async(self.settings.redis_url, self.settings.redis_sentinel_master)

    async def rank(
        self, query: str, documents: Sequence[str], *, timeout: float = 60.0, **options: Unpack[JobOptions]
    ) -> list[RankedDocument]:
        """As ``RerankClient.rank``: ``UnknownModel`` or ``NoWorkers`` at once, before enqueueing."""
        job = self.build(query, documents, **options)
        await self.send(job, require_worker=True)
        return (await self.job(job.job_id).result(timeout=timeout)).results

    async def submit(self, query: str, documents: Sequence[str], **options: Unpack[JobOptions]) -> AsyncJobHandle:
        job = self.build(query, documents, **options)
        await self.send(job)
        return self.job(job.job_id)

    def build(self, query: str, documents: Sequence[str], **options: Unpack[JobOptions]) -> RerankJob:
        """Validate and build a job without sending it (no I/O)."""
        return self._sync.build(query, documents, **options)

    async def send(self, job: RerankJob, *, require_worker: bool = False) -> None:
        await asyncio.to_thread(self._sync.send, job, require_worker=require_worker)

    @property
    def app(self) -> Celery:
        return self._sync.app

    async def cancel(self, job_id: str) -> JobStatus:
        return await asyncio.to_thread(self._sync.cancel, job_id)

    def job(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self._sync.app, self._redis, job_id, self.settings)

    async def aclose(self) -> None:
        await self._redis.aclose()
        await asyncio.to_thread(self._sync.close)

    async def __aenter__(self) -> AsyncRerankClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
