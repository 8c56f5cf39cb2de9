"""Steer the session's real workers from a test: stop and restart a worker taking jobs off some
of its queues (Celery's cancel_consumer / add_consumer), so jobs wait in Redis as under overload."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rerankq import RerankClient
from rerankq.core.constants import TASK_RERANK, WORKERS_KEY, Lane, queue_name
from rerankq.core.live_workers import WorkerPresence
from rerankq.producer import job_ledger

CONTROL_TIMEOUT_S = 10.0


def worker_id_of(client: RerankClient, model: str) -> str:
    raw = client.app.backend.client.hvals(WORKERS_KEY)
    presences = [WorkerPresence.from_json(entry) for entry in raw]
    return next(p.worker_id for p in presences if p is not None and p.model == model)


@contextmanager
def paused(client: RerankClient, model: str, lanes: tuple[Lane, ...] = ("interactive",)) -> Iterator[None]:
    """The model's worker consumes none of ``lanes`` inside the block (and again after it)."""
    destination = [worker_id_of(client, model)]
    for lane in lanes:
        # the worker's reply says the consumer is cancelled (a busy worker may answer late)
        replies = client.app.control.cancel_consumer(
            queue_name(model, lane), destination=destination, reply=True, timeout=CONTROL_TIMEOUT_S
        )
        assert replies, f"{destination[0]} did not confirm it stopped consuming {lane}"
    try:
        yield
    finally:
        resume(client, model, lanes)


def resume(client: RerankClient, model: str, lanes: tuple[Lane, ...]) -> None:
    destination = [worker_id_of(client, model)]
    for lane in lanes:
        queue = queue_name(model, lane)
        client.app.control.add_consumer(queue, destination=destination, reply=True, timeout=CONTROL_TIMEOUT_S)


def send_raw(client: RerankClient, payload: dict[str, Any], queue: str, model: str) -> str:
    """Publish a rerank task as a producer that bypasses the SDK's own checks would, recording the
    job in the ledger as every producer does (so handles know it exists). Returns the job id."""
    job_id = str(payload.get("job_id") or uuid.uuid4())
    job_ledger.record_submitted(client.app.backend.client, job_id, model, "interactive", client.settings)
    client.app.send_task(TASK_RERANK, args=[payload], task_id=job_id, queue=queue)
    return job_id
