"""Which jobs exist, and cancelling the ones still queued.

Celery's result backend cannot tell a queued job from an id nobody ever submitted (both read
PENDING), so every submit also leaves a small marker under ``rerankq:job:<id>``, living as long
as results do. Cancelling sets a flag the worker checks before it starts the job, and stores the
job's final state at once, so everyone waiting on it wakes up.
"""

from __future__ import annotations

import json
import time

import redis
from celery import Celery, states

from rerankq.errors import JobNotFound
from rerankq.producer.constants import STATE_REROUTED, Lane, cancel_key, job_key
from rerankq.producer.jobs import JobStatus, status_of
from rerankq.producer.settings import Settings


def record_submitted(client: redis.Redis, job_id: str, model: str, lane: Lane, settings: Settings) -> None:
    marker = json.dumps({"model": model, "lane": lane, "submitted_at": time.time()})
    client.set(job_key(job_id), marker, ex=settings.result_ttl_s)


def cancel(app: Celery, client: redis.Redis, job_id: str, settings: Settings) -> JobStatus:
    """Cancel a job no worker has started. Returns CANCELLED, or the job's status when it is too
    late (started or finished). Raises ``JobNotFound`` for an unknown id.

    A worker that picks the job up in the instant between the check and the flag may still
    finish it; its result then replaces the cancelled state (a real score, never a wrong one)."""
    state = app.AsyncResult(job_id).state
    if state == states.PENDING and not client.exists(job_key(job_id)):
        raise JobNotFound(job_id)
    if state not in (states.PENDING, STATE_REROUTED):
        return status_of(state)
    client.set(cancel_key(job_id), 1, ex=settings.visibility_timeout_s * 4)
    app.backend.mark_as_revoked(job_id, reason="cancelled")
    return JobStatus.CANCELLED
