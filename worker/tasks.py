"""The rerank task: check the job, tokenize, hand pairs to the batcher, rank, log one line."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import ValidationError

from producer.constants import TASK_RERANK, deliveries_key
from producer.contract import JobStats, RerankJob, RerankResult, check_job, rank_scores
from producer.errors import InvalidRequest, JobFailed
from worker.app import app
from worker.runtime import Runtime, current

log = logging.getLogger("rerankq.jobs")


@app.task(name=TASK_RERANK)  # type: ignore[untyped-decorator]
def rerank(payload: dict[str, Any]) -> dict[str, Any]:
    runtime = current()
    job = parse_job(payload, runtime)
    count_delivery(job.job_id, runtime)
    result = score_job(job, runtime)
    runtime.redis.delete(deliveries_key(job.job_id))
    return result.model_dump()


def parse_job(payload: Any, runtime: Runtime) -> RerankJob:
    try:
        job = RerankJob.model_validate(payload)
    except ValidationError as e:
        error = e.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "job"
        raise InvalidRequest(field, error["msg"]) from e
    check_job(job, runtime.settings)
    if job.model != runtime.model_name:
        raise InvalidRequest("model", f"this worker serves {runtime.model_name!r}", f"got {job.model!r}")
    return job


def count_delivery(job_id: str, runtime: Runtime) -> None:
    """Late acks redeliver a job whose worker died; a job that keeps killing workers must stop."""
    key = deliveries_key(job_id)
    pipe = runtime.redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, runtime.settings.visibility_timeout_s * 4)
    deliveries, _ = pipe.execute()
    cap = runtime.settings.max_deliveries
    if deliveries > cap:
        raise JobFailed(job_id, f"delivered {deliveries} times (cap {cap}); it may be crashing its worker")


def score_job(job: RerankJob, runtime: Runtime) -> RerankResult:
    started = time.time()
    backend = runtime.backend
    max_length = min(job.max_length or backend.max_length, runtime.manifest.model_max_length)
    pairs = backend.encode(job.query, job.documents, max_length)
    tokenized = time.time()
    scored = runtime.batcher.submit(pairs).result(timeout=runtime.settings.job_time_limit_s)
    finished = time.time()
    scores = [backend.normalize(s) for s in scored.scores] if job.normalize else scored.scores
    stats = JobStats(
        pairs=len(pairs),
        queue_ms=max(0.0, (started - job.enqueued_at) * 1000),
        tokenize_ms=(tokenized - started) * 1000,
        infer_ms=(finished - tokenized) * 1000,
        batches=scored.batch_ids,
    )
    results = rank_scores(scores, job.top_n, job.documents if job.return_documents else None)
    log_job(job, runtime, stats, results[0].score if results else None)
    return RerankResult(job_id=job.job_id, model=job.model, device=backend.device, results=results, stats=stats)


def log_job(job: RerankJob, runtime: Runtime, stats: JobStats, top_score: float | None) -> None:
    """One structured line per job; document text is never logged."""
    line = {
        "event": "job_done",
        "job_id": job.job_id,
        "model": job.model,
        "device": runtime.backend.device,
        "pairs": stats.pairs,
        "batches": len(stats.batches),
        "queue_ms": round(stats.queue_ms, 2),
        "tokenize_ms": round(stats.tokenize_ms, 2),
        "infer_ms": round(stats.infer_ms, 2),
        "top_score": top_score,
    }
    log.info(json.dumps(line))
