"""A job's status as callers see it, from the state Celery's result backend stores."""

from __future__ import annotations

import enum
from typing import Any

from celery import states

from rerankq.core.constants import STATE_REROUTED

Meta = dict[str, Any]  # a job's state as Celery's backend stores it: status, result, ...


class JobStatus(enum.StrEnum):
    PENDING = "pending"  # submitted, waiting in its queue
    STARTED = "started"  # a worker is scoring it
    WAITING_FOR_CPU = "waiting_for_cpu"  # moved to the cpu lane after GPU out-of-memory
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # cancelled before a worker started it


_STATUS_OF_STATE = {
    states.STARTED: JobStatus.STARTED,
    STATE_REROUTED: JobStatus.WAITING_FOR_CPU,
    states.SUCCESS: JobStatus.SUCCEEDED,
    states.FAILURE: JobStatus.FAILED,
    states.REVOKED: JobStatus.CANCELLED,
}


def status_of(state: str) -> JobStatus:
    return _STATUS_OF_STATE.get(state, JobStatus.PENDING)


def status_of_meta(meta: Meta | None) -> JobStatus:
    """A stored job's status; nothing stored yet is pending."""
    return status_of(meta["status"]) if meta else JobStatus.PENDING
