"""Honest readiness, with real processes: a worker started before its Redis waits for it, saying
so, and is ready only once Redis answers; a worker whose consumer dies takes its presence with it
(producers fail fast with NoWorkers) and exits non-zero; a gateway without Redis says so in one
line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from rerankq import RerankClient
from rerankq.core.constants import HEARTBEATS_KEY, WORKERS_KEY
from rerankq.errors import NoWorkers
from rerankq.testing.local_redis import RedisProcess, free_port
from rerankq.testing.processes import start_worker, stop_worker, wait_until_consuming
from rerankq.testing.waiting import wait_until

pytestmark = [pytest.mark.delivery, pytest.mark.slow]


def test_a_worker_waits_for_redis_and_is_ready_only_once_redis_answers(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    server = RedisProcess(tmp_path)  # a port nothing listens on yet
    env = {"RERANKQ_REDIS_URL": server.url, "RERANKQ_WORKER_METRICS_PORT": str(free_port())}
    worker = start_worker(str(model_dirs["tiny-bert"]), tmp_path / "worker.log", "--concurrency", "2", env=env)
    try:
        waiting = f"waiting for Redis at {server.url}: Error 111 connecting to 127.0.0.1:{server.port}"
        wait_until(lambda: worker.log().count(waiting) >= 2 or worker.process.poll() is not None, timeout=120)
        assert worker.process.poll() is None, worker.log()  # still waiting, not given up
        assert " ready." not in worker.log() and "metrics on" not in worker.log()  # Celery never started
        server.start()
        wait_until_consuming(worker)
        with RerankClient(server.url) as client:
            assert len(client.rank("capital of France", ["Paris", "Rome"], model="tiny-bert", timeout=60)) == 2
    finally:
        stop_worker(worker)
        server.stop()


def test_a_worker_whose_consumer_dies_withdraws_at_once_and_exits_non_zero(
    model_dirs: dict[str, Path], redis_server: object, tmp_path: Path
) -> None:
    """The consumer dies on its first poll, after Celery said ready (as it did on a kombu that
    lacked a hook, before the start-up check): the worker's presence and heartbeat go, the
    process exits with Celery's failure code, and a producer gets NoWorkers instead of a job that
    waits for its timeout."""
    crash_on_poll = (
        "import sys; from rerankq.worker import safe_transport as t\n"
        "def broken(self): raise RuntimeError('fault injected: the poll is broken')\n"
        "t._ClaimingRead._lane_lists = broken\n"
        "from rerankq.cli import main; main()"
    )
    name = "tiny-bert-dying"
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        command = [sys.executable, "-c", crash_on_poll, "worker", "--model", str(model_dirs["tiny-bert"])]
        process = subprocess.Popen([*command, "--device", "cpu", "--name", name], stdout=log_file, stderr=log_file)
    try:
        assert process.wait(timeout=120) != 0
    finally:
        process.kill()
    log = log_path.read_text(errors="replace")
    assert "Unrecoverable error: RuntimeError('fault injected: the poll is broken')" in log
    with RerankClient() as client:
        store: redis.Redis = client.app.backend.client
        assert not [key for key in store.hkeys(WORKERS_KEY) + store.hkeys(HEARTBEATS_KEY) if name.encode() in key]
        with pytest.raises(NoWorkers):
            client.rank("capital of France", ["Paris", "Rome"], model=name, timeout=60)


def test_a_gateway_without_redis_says_so_in_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    command = [sys.executable, "-m", "rerankq", "gateway", "--port", str(free_port()), "--redis-url", url]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=60)
    lines = [line for line in (ran.stdout + ran.stderr).splitlines() if line.strip()]
    assert ran.returncode == 3
    assert lines == [
        f"rerankq gateway: Redis at {url} (RERANKQ_REDIS_URL) is unreachable while starting the gateway: "
        f"Error 111 connecting to 127.0.0.1:{url.split(':')[2].split('/')[0]}. Connection refused.; "
        "start Redis or fix the URL, then retry"
    ]
