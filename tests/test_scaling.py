"""Horizontal scaling with real worker processes on one Redis: a worker that joins mid-run takes
jobs, and a worker stopped gracefully mid-run loses none."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from test_bulk_api import depth

from rerankq import RerankClient
from rerankq.core.constants import queue_name
from rerankq.testing.processes import WorkerProcess, start_worker, stop_worker, wait_until_consuming
from rerankq.testing.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.delivery]
DOCS = [f"passage {i} " + "lorem ipsum dolor sit amet " * 6 for i in range(20)]


def jobs_done(worker: WorkerProcess) -> set[str]:
    lines = [line for line in worker.log().splitlines() if '"job_done"' in line or '"slow_job"' in line]
    return {json.loads(line[line.index("{") :])["job_id"] for line in lines}


def start(model_dirs: dict[str, Path], tmp_path: Path, name: str, label: str) -> WorkerProcess:
    worker = start_worker(str(model_dirs["tiny-bert"]), tmp_path / f"{label}.log", "--name", name, "--concurrency", "4")
    wait_until_consuming(worker)
    return worker


def test_a_worker_joining_mid_run_takes_queued_jobs(
    model_dirs: dict[str, Path], tmp_path: Path, client: RerankClient
) -> None:
    name = "tiny-join"
    first = start(model_dirs, tmp_path, name, "first")
    joined = None
    try:
        client.app.control.cancel_consumer(queue_name(name), destination=[_hostname(first)], reply=True)
        handles = [client.submit(f"join {i} {time.monotonic_ns()}", DOCS, model=name) for i in range(30)]
        wait_until(lambda: depth(client.settings.redis_url, name, "interactive") == 30)
        joined = start(model_dirs, tmp_path, name, "joined")  # the run is under way: 30 jobs wait
        results = [handle.result(timeout=60) for handle in handles]
        assert all(len(result.results) == len(DOCS) for result in results)
        assert jobs_done(joined) == {handle.id for handle in handles}
    finally:
        for worker in (first, joined):
            if worker is not None:
                stop_worker(worker)


def test_a_worker_stopped_gracefully_mid_run_loses_no_job(
    model_dirs: dict[str, Path], tmp_path: Path, client: RerankClient
) -> None:
    name = "tiny-drain"
    leaving, staying = start(model_dirs, tmp_path, name, "leaving"), start(model_dirs, tmp_path, name, "staying")
    try:
        handles = [client.submit(f"drain {i} {time.monotonic_ns()}", DOCS, model=name) for i in range(300)]
        wait_until(lambda: len(jobs_done(leaving)) >= 5, timeout=60)
        leaving.process.send_signal(signal.SIGTERM)  # warm shutdown: finish what it runs, return the rest
        assert leaving.process.wait(60) == 0
        results = [handle.result(timeout=120) for handle in handles]
        assert all(len(result.results) == len(DOCS) for result in results)
        by_leaving, by_staying = jobs_done(leaving), jobs_done(staying)
        assert by_leaving | by_staying == {handle.id for handle in handles}
        assert by_leaving and by_staying  # both worked; every job finished exactly once between them
        assert not by_leaving & by_staying
    finally:
        stop_worker(leaving)
        stop_worker(staying)


def _hostname(worker: WorkerProcess) -> str:
    """The Celery hostname of a consuming worker: its id in presence and control commands."""
    hostname = worker.presence_id()
    assert hostname is not None, worker.log()[-2000:]
    return hostname
