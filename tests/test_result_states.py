"""The worker's result backend (rerankq.worker.results) on a real Redis: the STARTED state is
written by a background thread, off the job's way, and neither a STARTED written late nor a
second result ever replaces a job's first final state."""

from __future__ import annotations

import uuid

from celery import states

from rerankq.core.settings import Settings
from rerankq.worker.app import create_worker_app
from rerankq.worker.results import started_writes_done


def test_started_is_written_off_the_job_path_and_never_over_a_final_state(settings: Settings) -> None:
    backend = create_worker_app(settings, "result-states").backend
    running, finished = str(uuid.uuid4()), str(uuid.uuid4())

    backend.store_result(running, None, states.STARTED)
    started_writes_done()
    assert backend.get_task_meta(running)["status"] == states.STARTED

    backend.store_result(finished, {"scores": [1.0]}, states.SUCCESS)
    backend.store_result(finished, None, states.STARTED)  # a frozen copy of the job, starting late
    backend.store_result(finished, {"scores": [2.0]}, states.SUCCESS)  # and finishing late
    started_writes_done()
    stored = backend.decode_result(backend.client.get(backend.get_key_for_task(finished)))  # Redis, not a cache
    assert stored["status"] == states.SUCCESS and stored["result"] == {"scores": [1.0]}  # the first result stands
