"""Fixtures: a real redis-server started for the session, tiny offline models, real worker processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny_bert, build_tiny_xlm_roberta

from producer import RerankClient
from producer.settings import Settings, get_settings
from rerankq.local_redis import local_redis_server


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes] | None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Our own redis-server on a free port when the binary exists (fault tests can kill it),
    else the server at RERANKQ_REDIS_URL."""
    if shutil.which("redis-server") is None:
        yield RedisServer(os.environ.get("RERANKQ_REDIS_URL", "redis://127.0.0.1:6379/15"), None)
        return
    with local_redis_server() as server:
        yield RedisServer(server.url, server.process)


@pytest.fixture(scope="session", autouse=True)
def rerankq_env(redis_server: RedisServer) -> Iterator[None]:
    os.environ["RERANKQ_REDIS_URL"] = redis_server.url
    redis.Redis.from_url(redis_server.url).flushdb()
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "tiny-bert": build_tiny_bert(root / "tiny-bert"),
        "tiny-xlmr": build_tiny_xlm_roberta(root / "tiny-xlmr"),
    }


@dataclass
class WorkerProcess:
    model: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(model: str, log_path: Path, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "rerankq", "worker", "--model", model, "--device", "cpu", *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    return WorkerProcess(model, process, log_path)


def wait_until_consuming(worker: WorkerProcess, timeout: float = 120) -> None:
    """Ready means Celery logged that it is consuming (after the model loaded and warmed up)."""
    deadline = time.monotonic() + timeout
    while " ready." not in worker.log():
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker for {worker.model} exited:\n{worker.log()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker for {worker.model} not ready:\n{worker.log()}")
        time.sleep(0.1)


def stop_worker(worker: WorkerProcess) -> None:
    worker.process.terminate()
    try:
        worker.process.wait(20)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait()


@pytest.fixture(scope="session")
def workers(
    model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, WorkerProcess]]:
    """One real worker process per model, all started at once: two tiny cross-encoders and the
    real all-MiniLM-L6-v2 bi-encoder from the registry."""
    logs = tmp_path_factory.mktemp("worker-logs")
    specs = {name: str(path) for name, path in model_dirs.items()} | {"all-minilm-l6-v2": "all-minilm-l6-v2"}
    started = {name: start_worker(spec, logs / f"{name}.log", "--concurrency", "8") for name, spec in specs.items()}
    try:
        for worker in started.values():
            wait_until_consuming(worker)
        yield started
    finally:
        for worker in started.values():
            stop_worker(worker)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[RerankClient]:
    with RerankClient(redis_server.url) as client:
        yield client
