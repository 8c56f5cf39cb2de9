"""The gateway's one job, minus HTTP: resolve the model, admit or refuse, submit, wait.

Every endpoint (Cohere, Jina, TEI, jobs) goes through here; the routes only translate shapes.
Refusals are domain errors (rerankq.errors); rerankq.gateway.errors maps them to status codes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from rerankq.core import tracing
from rerankq.core.aliases import AsyncAliasTable, Route
from rerankq.core.catalog import Catalog, resolve_version
from rerankq.core.constants import DEFAULT_LANE, job_key, job_owner_key, queue_name
from rerankq.core.contract import RerankJob, RerankResult, read_result
from rerankq.core.registry import load_manifests
from rerankq.core.settings import Settings
from rerankq.errors import JobFailed, JobTimeout, RerankError
from rerankq.gateway.admission import Admission
from rerankq.gateway.key_queue import KeyQueue
from rerankq.gateway.rate_limits import Charge, RateLimiter, estimate_tokens
from rerankq.gateway.waiter import ResultWaiter
from rerankq.producer.async_client import AsyncRerankClient
from rerankq.producer.job_handles import answered, outcome_of_meta
from rerankq.producer.job_ledger import not_found
from rerankq.producer.job_status import JobStatus, status_of

if TYPE_CHECKING:
    from rerankq.gateway.auth import Caller


class GatewayBusy(RerankError):
    """This gateway process already holds its limit of waiting requests (HTTP 503)."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(limit, retry_after_s)

    def __str__(self) -> str:
        return f"this gateway holds {self.limit} waiting requests (its limit); retry in {self.retry_after_s}s"


@dataclass
class JobView:
    """A job as GET /v1/jobs/{id} shows it."""

    job_id: str
    status: JobStatus
    model: str | None
    result: RerankResult | None = None
    error: str | None = None


class RerankService:
    def __init__(self, settings: Settings, client: AsyncRerankClient, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.client = client
        self.redis = redis
        self.admission = Admission(redis, settings)
        self.waiter = ResultWaiter(client.app, redis)
        self.manifests = load_manifests(settings.models_dir)
        self.aliases = AsyncAliasTable(redis, settings)
        self.limiter = RateLimiter(redis)
        self.key_queue = KeyQueue(redis, settings, _text(client.app.backend.task_keyprefix))

    async def start(self) -> None:
        await self.waiter.start()

    async def stop(self) -> None:
        await self.waiter.stop()
        await self.client.aclose()
        self.admission.close()

    async def catalog(self) -> Catalog:
        admission = self.admission
        return Catalog(
            self.manifests, await admission.workers(), await self.aliases.table(), await admission.served_before()
        )

    async def resolve_model(self, requested: str | None) -> Route:
        """A request's model name to the version that serves it (the SDK's rule: rerankq.core.catalog)."""
        route = await self.aliases.resolve(requested)
        return resolve_version(route, await self.catalog(), self.settings.default_model)

    async def submit(
        self, caller: Caller, query: Any, documents: Sequence[Any], model: str | None, **options: Any
    ) -> RerankJob:
        """Validate (InvalidRequest / RequestTooLarge), resolve, charge the key's limits
        (RateLimited), admit (NoWorkers, QueueFull, the key's share of the queue), record the
        job's owner, enqueue. Input is checked first, against the default model's name, so a bad
        body costs no Redis round trip."""
        job = self.client.build(query, documents, model=self.settings.default_model, **options)
        async with AsyncExitStack() as admitted:
            with tracing.span("rerankq.admission") as span:
                job, cost = await self._admit(caller, job, model, admitted)
                attributes = tracing.job_attributes(job)
                span.set_attributes(attributes)
            tracing.annotate(attributes)  # the request's span (FastAPI's instrumentation)
            owner = json.dumps({"key": caller.key.name, "documents": cost.documents})
            await self.redis.set(job_owner_key(job.job_id), owner, ex=self.settings.result_ttl_s)
            await self.client.send(job)
        caller.usage.record_job(job.job_id, cost.documents, cost.tokens)
        return job

    async def _admit(
        self, caller: Caller, job: RerankJob, model: str | None, admitted: AsyncExitStack
    ) -> tuple[RerankJob, Charge]:
        """Route the job to its version, charge the key, take a place in the queue (given back
        when ``admitted`` closes)."""
        route = await self.resolve_model(model)
        job = job.model_copy(update={"model": route.model, "alias": route.alias})
        cost = Charge(len(job.documents), estimate_tokens(job, self.settings))
        caller.headers.update(await self.limiter.charge(caller.key, cost))
        await admitted.enter_async_context(self.admission.admitted(job.model))
        queue = queue_name(job.model, DEFAULT_LANE)
        await admitted.enter_async_context(self.key_queue.holding(caller.key, queue, job.job_id))
        return job, cost

    async def rank(
        self, caller: Caller, query: Any, documents: Sequence[Any], model: str | None, **options: Any
    ) -> RerankResult:
        """Submit and wait (the synchronous endpoints). A gateway already holding its limit of
        waiting requests refuses before enqueueing anything (GatewayBusy)."""
        if self.waiter.waiting >= self.settings.max_waiting_requests:
            raise GatewayBusy(self.settings.max_waiting_requests, self.settings.retry_after_s)
        job = await self.submit(caller, query, documents, model, **options)
        return await self.wait(job.job_id, tracing.job_attributes(job))

    async def wait(self, job_id: str, trace_attributes: Mapping[str, str | int] | None = None) -> RerankResult:
        """The job's result within the gateway timeout; JobTimeout (with the id) otherwise."""
        timeout = self.settings.gateway_timeout_s
        with tracing.span("rerankq.wait", trace_attributes or {"rerankq.job_id": job_id}):
            try:
                meta = await self.waiter.wait(job_id, timeout)
            except TimeoutError as e:
                view = await self.view(job_id)
                raise JobTimeout(job_id, timeout, view.status) from e
            return answered(outcome_of_meta(self.client.app.backend, job_id, meta))

    async def check_owner(self, caller: Caller, job_id: str) -> int | None:
        """The job's document count, if a gateway took it; JobNotFound, exactly as for an id never
        submitted, unless the job is the caller's (an answer that differed would tell another key
        the job exists). A job with no owner (sent with the SDK, not through a gateway) is visible
        to keys with the admin scope only."""
        owner = await self._owner(job_id)
        if owner is None and caller.key.may("admin"):
            return None
        if owner is None or owner["key"] != caller.key.name:
            raise not_found(job_id, self.settings.result_ttl_s)
        return int(owner["documents"])

    async def owner_documents(self, job_id: str) -> int | None:
        """The document count a gateway recorded for the job (what it bills), if one took it."""
        owner = await self._owner(job_id)
        return int(owner["documents"]) if owner is not None else None

    async def _owner(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(job_owner_key(job_id))
        return json.loads(raw) if raw else None

    async def view(self, job_id: str) -> JobView:
        """Status and, when finished, result or error. JobNotFound for an id never submitted."""
        marker = await self.redis.get(job_key(job_id))
        model = json.loads(marker)["model"] if marker else None
        meta = await self.waiter.read(job_id)
        if meta is None:
            if marker is None:
                raise not_found(job_id, self.settings.result_ttl_s)
            return JobView(job_id, JobStatus.PENDING, model)
        status = status_of(meta["status"])
        if status == JobStatus.SUCCEEDED:
            result = read_result(meta["result"])
            return JobView(job_id, status, result.model, result=result)
        if status in (JobStatus.FAILED, JobStatus.CANCELLED):
            return JobView(job_id, status, model, error=self._failure_reason(job_id, meta))
        return JobView(job_id, status, model)

    async def cancel(self, job_id: str) -> JobStatus:
        return await self.client.cancel(job_id)

    def _failure_reason(self, job_id: str, meta: dict[str, Any]) -> str:
        try:
            outcome_of_meta(self.client.app.backend, job_id, meta)
        except JobFailed as e:
            return e.reason
        return ""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
