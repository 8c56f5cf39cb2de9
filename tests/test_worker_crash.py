"""A worker killed mid-job (as by the kernel's OOM killer) loses nothing: late acks put the job
back once the visibility timeout passes, and another worker finishes it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rerankq.fleet import start_worker, stop_worker, wait_until_consuming
from rerankq.producer import RerankClient

pytestmark = pytest.mark.slow

MODEL = "crash-model"
# short visibility timeout so the test need not wait an hour; one pair per forward pass so the
# job runs long enough to be killed in the middle
CRASH_ENV = {"RERANKQ_VISIBILITY_TIMEOUT_S": "20", "RERANKQ_JOB_TIME_LIMIT_S": "19", "RERANKQ_MAX_BATCH_PAIRS": "1"}


def test_sigkill_mid_job_is_redelivered_and_finished(client: RerankClient, model_dirs: dict, tmp_path: Path) -> None:
    documents = [f"document {i} about rerankers and queues " * 8 for i in range(200)]
    first = start_worker(str(model_dirs["tiny-bert"]), tmp_path / "first.log", "--name", MODEL, env=CRASH_ENV)
    wait_until_consuming(first)
    handle = client.submit(f"crash query {time.monotonic_ns()}", documents, model=MODEL, cache=False)
    deadline = time.monotonic() + 30
    while handle.status() != "started":
        assert time.monotonic() < deadline, first.log()
        time.sleep(0.02)
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    assert handle.status() == "started"  # killed before it could answer
    # kombu restores expired messages when a consumer starts polling, then only every ~100 s
    # (throttled): start the second worker once the visibility timeout has surely passed.
    time.sleep(float(CRASH_ENV["RERANKQ_VISIBILITY_TIMEOUT_S"]) + 1)

    second = start_worker(str(model_dirs["tiny-bert"]), tmp_path / "second.log", "--name", MODEL, env=CRASH_ENV)
    try:
        wait_until_consuming(second)
        result = handle.result(timeout=90)
    finally:
        stop_worker(second)
    assert len(result.results) == len(documents)
    assert all(str(second.process.pid) in batch for batch in result.stats.batches)
