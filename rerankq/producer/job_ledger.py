"""Which jobs exist, where they wait, and cancelling the ones still queued.

Celery's result backend cannot tell a queued job from an id nobody ever submitted (both read
PENDING), so every submit also leaves a small record under ``rerankq:job:<id>`` (model, lane,
time), living as long as results do. A handle that finds neither a result nor a record raises
``JobNotFound``; job ids carry their creation time (contract.new_job_id), so it can say whether
the record expired. Cancelling sets a flag the worker checks before it starts the job, and stores the
job's final state at once, so everyone waiting on it wakes up.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from celery import Celery, states

from rerankq.core.constants import STATE_REROUTED, Lane, cancel_key, job_key, queue_name
from rerankq.core.contract import created_at
from rerankq.core.live_workers import WorkerPresence, serving
from rerankq.core.settings import Settings
from rerankq.errors import JobNotFound
from rerankq.producer.job_status import JobStatus, status_of


@dataclass(frozen=True)
class JobRecord:
    model: str
    lane: str
    submitted_at: float

    @classmethod
    def parse(cls, raw: bytes | str | None) -> JobRecord | None:
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(str(data["model"]), str(data["lane"]), float(data["submitted_at"]))
        except (ValueError, KeyError, TypeError):
            return None


def not_found(job_id: str, ttl_s: float) -> JobNotFound:
    made = created_at(job_id)
    expired = made is not None and time.time() - made > ttl_s
    return JobNotFound(job_id, ttl_s if expired else None)


def record_submitted(client: redis.Redis, job_id: str, model: str, lane: Lane, settings: Settings) -> None:
    marker = json.dumps({"model": model, "lane": lane, "submitted_at": time.time()})
    client.set(job_key(job_id), marker, ex=settings.result_ttl_s)


def no_worker_hint(record: JobRecord, workers: list[WorkerPresence], last_seen: float | None) -> str:
    """Why a pending job waits, when no live worker consumes its lane (else "")."""
    if serving(workers, record.model, record.lane):
        return ""
    queue = queue_name(record.model, record.lane)  # type: ignore[arg-type]
    since = (
        f"since {datetime.fromtimestamp(last_seen, UTC):%Y-%m-%d %H:%M:%S} UTC"
        if last_seen
        else "ever, as far as this Redis knows"
    )
    return f"no live worker has consumed {queue} {since}; start one with `rerankq worker --model {record.model}`"


def cancel(app: Celery, client: redis.Redis, job_id: str, settings: Settings) -> JobStatus:
    """Cancel a job no worker has started. Returns CANCELLED, or the job's status when it is too
    late (started or finished). Raises ``JobNotFound`` for an unknown id.

    A worker that picks the job up in the instant between the check and the flag may still
    finish it; its result then replaces the cancelled state (a real score, never a wrong one)."""
    state = app.AsyncResult(job_id).state
    if state == states.PENDING and not client.exists(job_key(job_id)):
        raise not_found(job_id, settings.result_ttl_s)
    if state not in (states.PENDING, STATE_REROUTED):
        return status_of(state)
    client.set(cancel_key(job_id), 1, ex=settings.visibility_timeout_s * 4)
    app.backend.mark_as_revoked(job_id, reason="cancelled")
    return JobStatus.CANCELLED
