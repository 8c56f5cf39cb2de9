"""Fault drills with real processes: foreign messages on a queue, a job that keeps killing its
worker, a worker killed mid-batch, Redis killed and restarted mid-run, and a burst of clients."""

from __future__ import annotations

import base64
import json
import pickle
import time
import uuid
from pathlib import Path

import pytest

from producer import JobFailed, RerankClient
from producer.constants import REJECTED_KEY, queue_name
from rerankq.fleet import WorkerProcess, start_worker, stop_worker, wait_until_consuming

pytestmark = [pytest.mark.fault, pytest.mark.slow]


def kombu_message(body: bytes, queue: str, content_type: str = "application/json", task: str = "rerankq.rerank") -> str:
    """A Celery task message as kombu's Redis transport stores it."""
    task_id = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "argsrepr": "?"},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


FOREIGN = {
    "unreadable": lambda queue: b"\xff\xfe not even JSON",
    "not a kombu message": lambda queue: json.dumps({"hello": "world"}),
    "pickle": lambda queue: kombu_message(pickle.dumps(([], {}, {})), queue, "application/x-python-serialize"),
    "unknown task": lambda queue: kombu_message(json.dumps([[], {}, {}]).encode(), queue, task="os.system"),
    "invalid job": lambda queue: kombu_message(json.dumps([["not a job"], {}, {}]).encode(), queue),
}


def test_foreign_messages_are_rejected_and_recorded_and_the_worker_keeps_serving(
    workers: dict[str, WorkerProcess], client: RerankClient, redis_server: object
) -> None:
    broker = client.app.backend.client
    broker.delete(REJECTED_KEY)
    queue = queue_name("tiny-bert")
    for make in FOREIGN.values():
        broker.lpush(queue, make(queue))
    assert client.rank("after the garbage", ["still", "serving"], model="tiny-bert", cache=False, timeout=30)
    deadline = time.monotonic() + 10
    while broker.llen(REJECTED_KEY) < len(FOREIGN):
        assert time.monotonic() < deadline, broker.lrange(REJECTED_KEY, 0, -1)
        time.sleep(0.1)
    entries = [json.loads(raw) for raw in broker.lrange(REJECTED_KEY, 0, -1)]
    reasons = " | ".join(f"{entry['kind']}: {entry['reason']}" for entry in entries)
    assert "unreadable: not a kombu JSON message (JSONDecodeError" in reasons
    assert "unreadable: not a kombu JSON message (KeyError" in reasons
    assert "Refusing to deserialize untrusted content of type pickle" in reasons  # never unpickled
    assert "unknown_task: no task named 'os.system'" in reasons
    assert "invalid_job: job: Input should be a valid dictionary" in reasons
    assert workers["tiny-bert"].process.poll() is None


# --- a poison job -------------------------------------------------------------------------------

POISON = "poison-pill"
POISON_ENV = {
    "RERANKQ_FAULT_CRASH_MARKER": POISON,  # a job whose query holds this kills its worker mid-job
    "RERANKQ_VISIBILITY_TIMEOUT_S": "6",
    "RERANKQ_JOB_TIME_LIMIT_S": "5",
}


def test_a_job_that_keeps_killing_its_worker_fails_after_the_cap(
    client: RerankClient, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Each crash puts the job back (late acks); a supervisor restarts the worker; the fourth
    delivery fails the job (RERANKQ_MAX_DELIVERIES=3) instead of crashing forever. The healthy
    job queued beside it is served."""
    model = f"poison-{uuid.uuid4().hex[:6]}"
    poison = client.submit(f"{POISON} query", ["doc"], model=model, cache=False)
    healthy = client.submit("healthy query", ["doc a", "doc b"], model=model, cache=False)
    crashes = 0
    for attempt in range(6):
        worker = start_worker(
            str(model_dirs["tiny-bert"]), tmp_path / f"w{attempt}.log", "--name", model, "--concurrency", "1",
            env=POISON_ENV,
        )  # fmt: skip
        wait_until_consuming(worker)
        while worker.process.poll() is None and poison.status() != "failed":
            time.sleep(0.1)
        if worker.process.poll() is None:
            break
        crashes += 1
        time.sleep(float(POISON_ENV["RERANKQ_VISIBILITY_TIMEOUT_S"]) + 1)  # until Redis may hand it out again
    try:
        with pytest.raises(JobFailed, match=r"delivered 4 times \(cap 3\)"):
            poison.result(timeout=30)
        assert len(healthy.result(timeout=30).results) == 2
    finally:
        stop_worker(worker)
    assert crashes == 3
    assert '"event": "fault_crash"' in (tmp_path / "w0.log").read_text()
