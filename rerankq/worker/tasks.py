"""The rerank task: check the job, tokenize, hand pairs to the batcher, rank, log one line."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.worker.request import Request
from pydantic import ValidationError

from rerankq.core import tracing
from rerankq.core.constants import (
    LANE_PRIORITY,
    STATE_REROUTED,
    TASK_RERANK,
    cancel_key,
    deliveries_key,
    lane_of,
    queue_name,
)
from rerankq.core.contract import (
    JobStats,
    RankedDocument,
    RerankJob,
    RerankResult,
    check_job,
    rank_scores,
    read_job,
    score_options,
)
from rerankq.errors import IncompatibleFormat, InvalidRequest, JobFailed, invalid_request
from rerankq.worker import metrics
from rerankq.worker.backends import EncodedPair
from rerankq.worker.loop_acks import on_event_loop
from rerankq.worker.oom import PairTooLarge
from rerankq.worker.rejections import record_rejection
from rerankq.worker.runtime import Runtime, current
from rerankq.worker.text_windows import PairLimits, Span, TextCutter, aggregate

log = logging.getLogger("rerankq.jobs")


class QuietRequest(Request):  # type: ignore[misc]
    """What the worker tells the world about a job (task events: Flower, event monitors) holds no
    query or document text. Celery's events carry the task's arguments (its ``argsrepr`` when the
    producer sent one) and a repr of its return value, which holds the documents when the caller
    asked for them back: both are replaced by a summary."""

    @property
    def argsrepr(self) -> str:
        sent = str(self.request_dict.get("argsrepr") or "")
        return sent if ARGSREPR.match(sent) else "<rerank job>"

    @property
    def kwargsrepr(self) -> str:
        return "{}"

    def send_event(self, type: str, **fields: Any) -> None:
        if "result" in fields:
            fields["result"] = RESULTREPR
        super().send_event(type, **fields)

    # Celery's own two, with the broker call made on the event loop (rerankq.worker.loop_acks)
    acknowledged: bool

    def acknowledge(self) -> None:
        if not self.acknowledged:
            self.acknowledged = True
            on_event_loop(self.on_ack, log, self.connection_errors)

    def reject(self, requeue: bool = False) -> None:
        if not self.acknowledged:
            self.acknowledged = True
            on_event_loop(self.on_reject, log, self.connection_errors, requeue)
            self.send_event("task-rejected", requeue=requeue)


ARGSREPR = re.compile(r"^<[A-Za-z0-9._-]+: (\d+ documents|rerouted)>$")  # what rerankq producers send
RESULTREPR = "<ranked documents: see the result backend>"


def register(app: Celery) -> None:
    """Add the rerank task to a worker's app (rerankq.worker.app.create_worker_app)."""
    app.task(name=TASK_RERANK, bind=True, Request=QuietRequest)(rerank)


def rerank(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    runtime, lane = current(), served_lane(self)
    with runtime.holding(lane):
        return run_job(self, payload, runtime, lane)


def run_job(task: Task, payload: dict[str, Any], runtime: Runtime, lane: str) -> dict[str, Any]:
    # kombu marks a message it puts back (its worker died or shut down before acking) as redelivered
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    with runtime.batcher.preparing():  # the batcher may wait for these pairs to join a batch
        job = parse_job(payload, runtime)
        trace_job(task, job, lane)
        skip_if_cancelled(task, job, runtime)
        if redelivered:
            count_redelivery(job.job_id, runtime)
        work = prepare(job, runtime, lane, look_again=redelivered)
    crash_if_asked(job, runtime)
    try:
        result = finish(work, runtime)
    except PairTooLarge as e:
        if "cpu" in runtime.lanes or job.rerouted_from is not None:
            raise JobFailed(job.job_id, f"{e}, and this is already the cpu fallback") from e
        move_to_cpu_lane(task, job, runtime, str(e))  # raises celery.exceptions.Ignore
    if redelivered:
        runtime.redis.delete(deliveries_key(job.job_id))
    return result.model_dump()


def trace_job(task: Task, job: RerankJob, lane: str) -> None:
    """The task's span (Celery's instrumentation opens it from the message's trace context): the
    job's attributes, its wait since it was built, and a bulk job's link to its record batch."""
    if not tracing.enabled():
        return
    queue_wait_ms = round(max(0.0, time.time() - job.enqueued_at) * 1000, 3)
    tracing.annotate(tracing.job_attributes(job, lane) | {"rerankq.queue_wait_ms": queue_wait_ms})
    tracing.link_current_to(getattr(task.request, tracing.LINK_HEADER, None))


def crash_if_asked(job: RerankJob, runtime: Runtime) -> None:
    """Fault injection (RERANKQ_FAULT_CRASH_MARKER, off unless set): die mid-job, no clean-up."""
    marker = runtime.settings.fault_crash_marker
    if marker and marker in job.query:
        log.error(json.dumps({"event": "fault_crash", "job_id": job.job_id}))
        os._exit(137)


def served_lane(task: Task) -> str:
    """The lane (queue) this job came off: ``rerankq.<model>.<lane>``."""
    return lane_of(str((task.request.delivery_info or {}).get("routing_key") or ""))


def skip_if_cancelled(task: Task, job: RerankJob, runtime: Runtime) -> None:
    """A job cancelled while queued is acknowledged and dropped. Its cancelled state is stored
    again: Celery marked it STARTED on the way in, over the canceller's."""
    if runtime.redis.exists(cancel_key(job.job_id)):
        task.backend.mark_as_revoked(job.job_id, reason="cancelled")
        metrics.JOBS.labels(job.model, served_lane(task), "cancelled").inc()
        log.info(json.dumps({"event": "job_cancelled", "job_id": job.job_id, "model": job.model}))
        raise Ignore()


def move_to_cpu_lane(task: Task, job: RerankJob, runtime: Runtime, reason: str) -> None:
    """Hand the job to the model's cpu lane under the same id: the producer's handle resolves as
    before, with the CPU worker's answer. Until a CPU worker starts it, its state says why it waits."""
    queue = queue_name(job.model, "cpu")
    runtime.redis.delete(deliveries_key(job.job_id))  # a fresh delivery count for the CPU worker
    runtime.cpu_reroutes += 1
    metrics.CPU_REROUTES.labels(job.model).inc()
    metrics.JOBS.labels(job.model, served_lane(task), "rerouted").inc()
    log.warning(
        json.dumps(
            {
                "event": "cpu_reroute",
                "job_id": job.job_id,
                "model": job.model,
                "reason": reason,
                "cpu_reroutes_total": runtime.cpu_reroutes,
            }
        )
    )
    task.update_state(state=STATE_REROUTED, meta={"lane": "cpu", "queue": queue, "model": job.model, "reason": reason})
    moved = job.model_copy(update={"rerouted_from": runtime.backend.device})
    rerouted = task.app.signature(
        TASK_RERANK, args=[moved.model_dump()], queue=queue, argsrepr=f"<{job.model}: rerouted>"
    )
    task.replace(rerouted)


def parse_job(payload: Any, runtime: Runtime) -> RerankJob:
    try:
        job = read_job(payload)
    except IncompatibleFormat as e:  # the job fails with the reason; this worker serves the next one
        record_rejection("incompatible_format", str(e))
        raise
    except ValidationError as e:
        invalid = invalid_request(e.errors(), "job", echo_input=False)
        record_rejection("invalid_job", str(invalid))
        raise invalid from e
    try:
        check_job(job, runtime.settings)
    except InvalidRequest as e:
        record_rejection("invalid_job", str(e))
        raise
    if job.model != runtime.model_name:
        raise InvalidRequest("model", f"this worker serves {runtime.model_name!r}", f"got {job.model!r}")
    return job


def count_redelivery(job_id: str, runtime: Runtime) -> None:
    """Late acks redeliver a job whose worker died; a job that keeps killing workers must stop.
    Only redeliveries are counted (the first delivery costs no round trip)."""
    key = deliveries_key(job_id)
    pipe = runtime.redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, runtime.settings.visibility_timeout_s * 4)
    redeliveries, _ = pipe.execute()
    deliveries = redeliveries + 1
    cap = runtime.settings.max_deliveries
    if deliveries > cap:
        raise JobFailed(job_id, f"delivered {deliveries} times (cap {cap}); it may be crashing its worker")


@dataclass
class PreparedJob:
    """A job with its cached scores looked up and the rest tokenized, ready for the batcher.
    What gets scored are texts: the documents, or (chunked) each document's windows."""

    job: RerankJob
    lane: str
    started: float
    known: dict[str, float]  # scores by text, from the cache
    late_hits: int
    missing: list[str]  # distinct texts to score
    pairs: list[EncodedPair]
    tokenize_ms: float
    windows: dict[str, list[Span]] | None = None  # chunked: each distinct document's windows

    @property
    def trace_attributes(self) -> dict[str, str | int]:
        return tracing.job_attributes(self.job, self.lane)


def prepare(job: RerankJob, runtime: Runtime, lane: str, look_again: bool = False) -> PreparedJob:
    """Scores from the cache where present; the rest (each distinct text once) tokenized."""
    started = time.time()
    tokenize_started = time.perf_counter()
    with tracing.span("rerankq.tokenize", tracing.job_attributes(job, lane)) as span:
        limits = job_limits(job, runtime)
        cutter = runtime.backend.cutter_for(job.instruction)  # InvalidRequest: an instruction for an encoder
        windows = document_windows(job, runtime, limits, cutter) if job.text.chunked else None
        texts = list(dict.fromkeys(_texts(job, windows)))
        known, late_hits = known_scores(job, runtime, texts, look_again)
        missing = [text for text in texts if text not in known]
        pairs = runtime.backend.encode(job.query, missing, limits, job.instruction) if missing else []
        span.set_attributes({"rerankq.pairs": len(pairs), "rerankq.cache_hits": len(known)})
    tokenize_ms = (time.perf_counter() - tokenize_started) * 1000
    return PreparedJob(job, lane, started, known, late_hits, missing, pairs, tokenize_ms, windows)


def job_limits(job: RerankJob, runtime: Runtime) -> PairLimits:
    model_limit = runtime.manifest.model_max_length
    return PairLimits.of(job.text, runtime.backend.max_length, model_limit, runtime.settings.query_share)


def document_windows(job: RerankJob, runtime: Runtime, limits: PairLimits, cutter: TextCutter) -> dict[str, list[Span]]:
    """Each distinct document's windows, sized to what fits beside the (cut) query (and an LLM's prompt)."""
    _, budget = cutter.fit_query(job.query, limits)
    most = job.text.chunks_per_doc(runtime.settings)
    return {doc: cutter.windows(doc, budget, job.text, most) for doc in dict.fromkeys(job.documents)}


def _texts(job: RerankJob, windows: dict[str, list[Span]] | None) -> list[str]:
    return [text for doc in job.documents for text in _texts_of(doc, windows)]


def finish(work: PreparedJob, runtime: Runtime) -> RerankResult:
    """Score the misses in the shared batcher, store them in the cache, rank, log one line."""
    job, known, lane = work.job, work.known, work.lane
    computed, stats = compute_scores(work, runtime)
    refuse_non_finite(job, computed)
    if job.cache and runtime.cache.enabled and (computed or work.late_hits):
        options = score_options(job)
        with tracing.span("rerankq.cache_write", work.trace_attributes):
            runtime.cache.store(job.model, runtime.identity, options, job.query, computed, hits=work.late_hits)
    scored = known | computed
    stats.queue_ms = max(0.0, (work.started - job.enqueued_at) * 1000)
    stats.cache_hits = sum(1 for doc in job.documents if all(text in known for text in _texts_of(doc, work.windows)))
    results = ranked(job, scored, work.windows)
    top_score = results[0].score if results else None
    stats.finished_at = time.time()
    log_job(job, lane, runtime, stats, top_score)
    metrics.observe_job(job.model, lane, len(job.documents), stats, top_score if job.normalize else None)
    return RerankResult(
        job_id=job.job_id,
        model=job.model,
        revision=runtime.revision,
        alias=job.alias,
        device=runtime.backend.device,
        backend=runtime.backend.served_by,
        results=results,
        stats=stats,
        rerouted_from=job.rerouted_from,
        traceparent=tracing.traceparent(),  # the task's span: a waiter links to it
    )


def ranked(job: RerankJob, scored: dict[str, float], windows: dict[str, list[Span]] | None) -> list[RankedDocument]:
    """Documents by score. Chunked: each document's windows aggregated, and its result names the
    span of the window that scored best (for ``first``, the first) and how many were scored."""
    documents = job.documents if job.return_documents else None
    if windows is None:
        return rank_scores([scored[doc] for doc in job.documents], job.top_n, documents)
    per_document = [
        aggregate([scored[span.of(doc)] for span in windows[doc]], job.text.aggregate) for doc in job.documents
    ]
    results = rank_scores([score for score, _ in per_document], job.top_n, documents)
    return [
        _with_span(result, windows[job.documents[result.index]], per_document[result.index][1]) for result in results
    ]


def _with_span(result: RankedDocument, spans: list[Span], best: int) -> RankedDocument:
    return result.model_copy(update={"span": (spans[best].start, spans[best].end), "chunks": len(spans)})


def _texts_of(doc: str, windows: dict[str, list[Span]] | None) -> list[str]:
    return [doc] if windows is None else [span.of(doc) for span in windows[doc]]


def refuse_non_finite(job: RerankJob, computed: dict[str, float]) -> None:
    """Never serve or cache a NaN: the start-up check catches broken weights, but an input can still
    overflow (fp16 on a GPU). The job fails with the reason; the worker keeps serving."""
    bad = sum(not math.isfinite(score) for score in computed.values())
    if bad:
        log.error(json.dumps({"event": "non_finite_scores", "job_id": job.job_id, "model": job.model, "pairs": bad}))
        raise JobFailed(job.job_id, f"the model scored {bad} of {len(computed)} pairs NaN or infinity; nothing served")


def known_scores(job: RerankJob, runtime: Runtime, texts: list[str], look_again: bool) -> tuple[dict[str, float], int]:
    """What the producer found, if it used this worker's model identity. The worker looks up the
    rest itself when the producer could not (another identity, none known yet, a chunked job's
    windows) or when ``look_again`` (a redelivered job finds what its crashed worker wrote).
    Returns (scores by text, late hits)."""
    if not (job.cache and runtime.cache.enabled):
        return {}, 0
    if job.cache_identity != runtime.identity:
        known = {}
    else:
        known = {job.documents[i]: score for i, score in job.cached_scores.items()}
        if not look_again:
            return known, 0
    rest = [text for text in texts if text not in known]
    late = runtime.cache.lookup(job.model, runtime.identity, score_options(job), job.query, rest)
    return known | late, sum(1 for doc in rest if doc in late)


def compute_scores(work: PreparedJob, runtime: Runtime) -> tuple[dict[str, float], JobStats]:
    """Score the tokenized pairs in the shared batcher; scores by document text."""
    if not work.pairs:
        return {}, JobStats()
    submitted, submitted_ns = time.time(), time.time_ns()
    priority = LANE_PRIORITY[work.job.lane]
    # the forward passes (in the batcher's thread) link back to this job's span
    future = runtime.batcher.submit(work.pairs, priority, tracing.job_trace(work.trace_attributes))
    scored = future.result(timeout=runtime.settings.job_time_limit_s)
    if tracing.enabled():  # the wait the batcher timed, as a span of its own
        waited = work.trace_attributes | {"rerankq.waited_batches": scored.waited_batches}
        tracing.record("rerankq.batch_wait", submitted_ns, submitted_ns + int(scored.waited_s * 1e9), waited)
    backend = runtime.backend
    scores = [backend.normalize(s) for s in scored.scores] if work.job.normalize else scored.scores
    stats = JobStats(
        pairs=len(work.pairs),
        tokens=sum(pair.length for pair in work.pairs),
        tokenize_ms=work.tokenize_ms,
        infer_ms=(time.time() - submitted) * 1000,
        batches=scored.batch_ids,
        waited_batches=scored.waited_batches,
        batch_wait_ms=scored.waited_s * 1000,
        forward_ms=scored.forward_s * 1000,
    )
    return dict(zip(work.missing, scores, strict=True)), stats


def log_job(job: RerankJob, lane: str, runtime: Runtime, stats: JobStats, top_score: float | None) -> None:
    """One structured line per job (a warning when slow); document text is never logged."""
    worker_ms = stats.queue_ms + stats.tokenize_ms + stats.infer_ms
    slow_ms = runtime.settings.slow_job_ms_for(runtime.backend.device)
    slow = slow_ms is not None and len(job.documents) <= runtime.settings.slow_job_pairs and worker_ms > slow_ms
    line = {
        "event": "slow_job" if slow else "job_done",
        "job_id": job.job_id,
        "model": job.model,
        "lane": lane,
        "device": runtime.backend.device,
        "backend": runtime.backend.served_by,
        "pairs": stats.pairs,
        "cache_hits": stats.cache_hits,
        "batches": len(stats.batches),
        "waited_batches": stats.waited_batches,
        "queue_ms": round(stats.queue_ms, 2),
        "tokenize_ms": round(stats.tokenize_ms, 2),
        "infer_ms": round(stats.infer_ms, 2),
        "top_score": top_score,
        "token_budget": runtime.batcher.budget.current,
        "rerouted_from": job.rerouted_from,
    }
    log.log(logging.WARNING if slow else logging.INFO, json.dumps(line))
