"""Fixtures: a real redis-server started for the session, tiny offline models, real worker processes."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Random-weight tiny models rank the golden set by chance: their workers skip that one check
# (NaN / constant outputs still refuse a model). Real weights and test_models_check turn it on.
os.environ["RERANKQ_CHECK_RANKING"] = "false"


from rerankq import RerankClient
from rerankq.core.settings import Settings, get_settings, use_settings
from rerankq.testing.local_redis import local_redis_server
from rerankq.testing.model_shapes import build_tiny_bert, build_tiny_xlm_roberta
from rerankq.testing.processes import (
    GatewayProcess,
    WorkerProcess,
    running_workers,
    start_gateway,
    start_worker,
    stop_process,
    stop_worker,
    wait_until_consuming,
)

# Two pytest processes share two cores with the worker processes they start: a test process's own
# torch work (reference scores, training the validator's model, the int8 gate's measure) runs on
# one thread instead of two threads per process contending for the same cores (measured: the real
# weights' int8 gate test 77 -> 36 s, the validator model's training 66 -> under 20 s, in `make test`)
torch.set_num_threads(1)


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
    use_settings(None)
    yield
    use_settings(None)


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


@pytest.fixture(scope="session")
def workers(
    model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, WorkerProcess]]:
    """One real worker process per model, all started at once: two tiny cross-encoders and the
    real all-MiniLM-L6-v2 bi-encoder from the registry."""
    logs = tmp_path_factory.mktemp("worker-logs")
    specs = {name: str(path) for name, path in model_dirs.items()} | {"all-minilm-l6-v2": "all-minilm-l6-v2"}
    # the real weights pass every check, golden ranking included
    checks = {name: ("--check-ranking",) if name == "all-minilm-l6-v2" else () for name in specs}
    started = {
        name: start_worker(spec, logs / f"{name}.log", "--concurrency", "8", *checks[name])
        for name, spec in specs.items()
    }
    try:
        for worker in started.values():
            wait_until_consuming(worker)
        yield started
    finally:
        for worker in started.values():
            stop_worker(worker)


@pytest.fixture(scope="session")
def faulty_model(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A CPU worker of the tiny BERT, served as "tiny-faulty", whose backend raises out-of-memory
    on any pair longer than 24 tokens (fault injection): jobs holding such a pair fail."""
    name, env = "tiny-faulty", {"RERANKQ_FAULT_OOM_PAIR_TOKENS": "24"}
    logs = tmp_path_factory.mktemp("faulty-worker")
    with running_workers(str(model_dirs["tiny-bert"]), logs, 1, "--name", name, "--concurrency", "4", env=env):
        yield name


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[RerankClient]:
    with RerankClient(redis_server.url) as client:
        yield client


@pytest.fixture(scope="session")
def gateway(workers: dict[str, WorkerProcess], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A real `rerankq gateway` process with API keys (one plain, one as its digest), an alias,
    a callback secret, and small size limits; the default model is the tiny BERT."""
    from gateway_support import GATEWAY_ENV

    process = start_gateway(tmp_path_factory.mktemp("gateway-logs") / "gateway.log", env=GATEWAY_ENV)
    try:
        yield process
    finally:
        stop_process(process.process)


@pytest.fixture
def paused_model(client: RerankClient, workers: dict) -> Iterator[object]:
    """The tiny XLM-R worker stops consuming its interactive queue for the test (see PausedModel)."""
    from gateway_support import PausedModel
    from worker_support import paused, resume

    model = "tiny-xlmr"
    with paused(client, model):
        yield PausedModel(model, lambda: resume(client, model, ("interactive",)))


# The longest files start first, in this order, one on each pytest process (--dist loadfile
# hands files out in collection order), so none is left to run alone at the end of the suite.
# The first two lead `make test`; the next three lead `make test-lowest` (the delivery tests).
LONGEST_FIRST = ("test_delivery.py", "test_bench_smoke.py", "test_gpu_kit.py", "test_faults.py", "test_scaling.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))
