"""The blocking producer SDK: validate, enqueue on the model's queue, wait for the ranked answer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from celery import states
from typing_extensions import Unpack

from rerankq.core import tracing
from rerankq.core.aliases import AliasTable, Route
from rerankq.core.broker import lane_queue
from rerankq.core.catalog import Catalog, resolve_version
from rerankq.core.celery_app import make_celery
from rerankq.core.constants import DEFAULT_ALIAS, DEFAULT_LANE, TASK_RERANK, Lane, queue_name
from rerankq.core.contract import (
    JobOptions,
    RankedDocument,
    RerankJob,
    RerankResult,
    answer_from_cache,
    build_job,
    check_model_name,
    check_option_names,
    kind_of,
    score_options,
)
from rerankq.core.live_workers import LiveWorkers, serving
from rerankq.core.redis_clients import broker_errors
from rerankq.core.registry import LLM_KINDS, load_manifests
from rerankq.core.settings import Settings, get_settings
from rerankq.core.text_options import text_options
from rerankq.errors import InvalidRequest, NoWorkers
from rerankq.producer import job_ledger
from rerankq.producer.job_handles import JobHandle
from rerankq.producer.job_status import JobStatus
from rerankq.producer.rank_many import BulkRanker, BulkRecord, RecordResult
from rerankq.producer.score_cache import ScoreCache
from rerankq.producer.subscriptions import ThreadSubscriptions


class RerankClient:
    """Rerank documents against a query on rerankq workers.

    >>> client = RerankClient()                      # RERANKQ_REDIS_URL or redis://localhost:6379/0
    >>> client.rank("what is AI", ["AI is ...", "apples are ..."], top_n=1)
    [RankedDocument(index=0, score=0.97..., document=None, span=None, chunks=None)]
    """

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        if redis_url is not None:
            settings = settings.updated(redis_url=redis_url)
        self.settings = settings
        self.app = make_celery(settings, main="rerankq-producer")
        self.cache = ScoreCache(settings)
        self.aliases = AliasTable(self.app.backend.client, settings)
        self.workers = LiveWorkers(self.app.backend.client, settings.presence_interval_s)
        self.manifests = load_manifests(settings.models_dir)
        self.subscriptions = ThreadSubscriptions(self.app.backend.client)  # waits reuse a connection

    def rank(
        self, query: str, documents: Sequence[str], *, timeout: float = 60.0, **options: Unpack[JobOptions]
    ) -> list[RankedDocument]:
        """Scores sorted highest first; ``.index`` is the document's position in ``documents``.
        Raises ``UnknownModel`` or ``NoWorkers`` (no live worker consumes the model's lane) at
        once, before anything is enqueued, as the gateway answers 404 and 503."""
        job = self.build(query, documents, **options)
        self.send(job, require_worker=True)
        return self.job(job.job_id).result(timeout=timeout).results

    def submit(self, query: str, documents: Sequence[str], **options: Unpack[JobOptions]) -> JobHandle:
        """Enqueue a job and return its handle at once. Raises ``InvalidRequest`` or
        ``UnknownModel`` before enqueueing; with no live worker the job waits in its queue (a
        fleet scaling from zero), and a ``JobTimeout`` then says so."""
        job = self.build(query, documents, **options)
        self.send(job)
        return self.job(job.job_id)

    def job(self, job_id: str) -> JobHandle:
        """A handle for a job submitted earlier, by this or any other process."""
        return JobHandle(self.app, job_id, self.settings, self.subscriptions)

    def build(
        self, query: str, documents: Sequence[str], *, lane: Lane = DEFAULT_LANE, **options: Unpack[JobOptions]
    ) -> RerankJob:
        """Validate and build a job without sending it. Its model stays as asked (maybe an alias,
        ``default`` when none is given) until ``send`` routes it to a version. A keyword that is
        no option is a ``TypeError``, as Python raises for a misspelled argument."""
        check_option_names(options)
        return build_job(
            query,
            documents,
            lane=lane,
            model=options.get("model") or DEFAULT_ALIAS,
            top_n=options.get("top_n"),
            return_documents=options.get("return_documents", False),
            normalize=options.get("normalize", True),
            cache=options.get("cache", True),
            text=text_options(options),
            instruction=options.get("instruction"),
            settings=self.settings,
        )

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job no worker has started yet: CANCELLED, or its status when too late.
        Raises ``JobNotFound`` for an unknown id."""
        return job_ledger.cancel(self.app, self.app.backend.client, job_id, self.settings)

    def send(self, job: RerankJob, *, require_worker: bool = False) -> None:
        """Publish the job, or store its answer at once when the cache holds every document.
        Raises ``UnknownModel``; ``NoWorkers`` with ``require_worker`` when no live worker
        consumes the lane (a job the cache answers needs none); ``BrokerUnavailable`` when Redis
        cannot be reached (kombu retries briefly first)."""
        with broker_errors("sending a job", self.settings.redis_url), tracing.span("rerankq.submit") as span:
            job = self.route(job)
            span.set_attributes(tracing.job_attributes(job))
            job_ledger.record_submitted(self.app.backend.client, job.job_id, job.model, job.lane, self.settings)
            if (answer := self._dispatch_routed(job, require_worker)) is not None:
                self._store(answer)
                span.set_attribute("rerankq.answered_from_cache", True)

    def dispatch(self, job: RerankJob, require_worker: bool = False) -> RerankResult | None:
        """Publish the job on its lane's queue, carrying the cached scores so the worker computes
        only the misses. Returns the answer instead when there is nothing left to compute."""
        return self._dispatch_routed(self.route(job), require_worker)

    def _dispatch_routed(self, job: RerankJob, require_worker: bool) -> RerankResult | None:
        if job.instruction is not None:
            self._check_takes_instruction(job.model)
        if not job.documents:
            return RerankResult(job_id=job.job_id, model=job.model, alias=job.alias, device="none", results=[])
        job = self._with_cached_scores(job)
        if len(job.cached_scores) == len(job.documents):
            return answer_from_cache(job)
        if require_worker and not serving(self.workers.read(), job.model, job.lane):
            raise NoWorkers(job.model, job.lane, is_default=job.model == self.settings.default_model)
        with broker_errors("sending a job", self.settings.effective_broker_url):
            self._publish(job)
        return None

    def _publish(self, job: RerankJob) -> None:
        """Put the job on its lane's queue with its trace context in the message headers: the
        current span as its parent, or for a bulk job a link to it (``tracing.link_headers``)."""
        if job.lane == "bulk":
            links = tracing.link_headers()
            with tracing.detached():
                self._send_task(job, links)
            return
        with tracing.span("rerankq.enqueue", tracing.job_attributes(job)):
            self._send_task(job, tracing.headers())

    def _send_task(self, job: RerankJob, headers: dict[str, str]) -> None:
        self.app.send_task(
            TASK_RERANK,
            args=[job.model_dump()],
            task_id=job.job_id,
            queue=lane_queue(queue_name(job.model, job.lane), self.settings),
            # task events (Flower) show this instead of the arguments: no document text leaves
            argsrepr=f"<{job.model}: {len(job.documents)} documents>",
            kwargsrepr="{}",
            headers=headers or None,
        )

    def route(self, job: RerankJob) -> RerankJob:
        """The job addressed to the model version its model name stands for: an alias picks one
        per job (by weight), ``default`` is the default alias or ``RERANKQ_DEFAULT_MODEL``, a
        Hugging Face id names its manifest's version. ``UnknownModel`` for any other name."""
        if job.alias is not None:  # routed already (resolving a version again gives itself)
            return job
        route = self.resolve(job.model)
        check_model_name(route.model)
        if (route.model, route.alias) == (job.model, None):
            return job
        return job.model_copy(update={"model": route.model, "alias": route.alias})

    def resolve(self, requested: str | None) -> Route:
        """The version (and alias) a model name stands for now (rerankq.core.catalog)."""
        route = self.aliases.resolve(requested)
        catalog = Catalog(self.manifests, self.workers.read(), self.aliases.table(), self.workers.served_before())
        return resolve_version(route, catalog, self.settings.default_model)

    def rank_many(
        self,
        records: Iterable[BulkRecord | Mapping[str, Any] | Exception],
        *,
        max_in_flight: int | None = None,
        ordered: bool = False,
        on_wait: Callable[[], object] | None = None,
        **options: Unpack[JobOptions],
    ) -> Iterator[RecordResult]:
        """Rerank many records on the model's bulk lane; yield each record's result (its id, ranked
        documents, or the reason it failed) as it completes, or in input order with ``ordered``.
        Reads records only as fast as results come back: at most ``max_in_flight`` jobs
        (default ``RERANKQ_BULK_MAX_IN_FLIGHT``) wait in Redis at a time. ``on_wait`` is called
        about every second while waiting (a progress display). Raises ``UnknownModel`` at once."""
        check_option_names(options)
        self.resolve(options.get("model"))  # UnknownModel now, before a record is read
        ranker = BulkRanker(self, max_in_flight or self.settings.bulk_max_in_flight, options)
        return ranker.run(records, ordered=ordered, on_wait=on_wait)

    def _check_takes_instruction(self, model: str) -> None:
        """An instruction for a model that has nowhere to put one fails here, not on a worker:
        what the live workers serve says the model's kind (its manifest, when none is up)."""
        kinds = {kind_of(worker.identity) for worker in self.workers.read() if worker.model == model}
        if not kinds and (manifest := self.manifests.get(model)) is not None:
            kinds = {manifest.kind}
        if kinds and not kinds & set(LLM_KINDS):
            raise InvalidRequest(
                "instruction",
                f"only LLM rerankers ({', '.join(LLM_KINDS)}) read an instruction; "
                f"{model} is a {', '.join(sorted(kinds))}",
                "leave instruction out for it",
            )

    def _with_cached_scores(self, job: RerankJob) -> RerankJob:
        # a chunked document's score is made of its windows' scores: only the worker, holding the
        # tokenizer, knows its windows (it looks them up in the cache itself)
        if not (job.cache and self.cache.enabled) or job.text.chunked:
            return job
        identity = self.cache.identity(job.model)
        if identity is None:  # no worker has served this model yet: nothing can be cached
            return job
        with tracing.span("rerankq.cache_lookup", tracing.job_attributes(job)) as span:
            found = self.cache.lookup(job.model, identity, score_options(job), job.query, job.documents)
            cached = {i: found[doc] for i, doc in enumerate(job.documents) if doc in found}
            span.set_attribute("rerankq.cache_hits", len(cached))
        self.cache.count_hits(len(cached))
        return job.model_copy(update={"cache_identity": identity, "cached_scores": cached})

    def _store(self, result: RerankResult) -> None:
        """Store an answer made without a worker under its job id, so any process can fetch it."""
        self.app.backend.store_result(result.job_id, result.model_dump(), states.SUCCESS)

    def close(self) -> None:
        self.subscriptions.close()
        self.app.close()
        self.cache.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
