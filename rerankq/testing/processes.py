"""Worker and gateway processes started and stopped from Python: for the demo, the benchmarks
and the tests.

Each worker is a real ``rerankq worker`` subprocess logging to a file; it is ready once its
presence entry is in Redis, which it writes once Celery consumes (after the model loaded and
warmed up, and Redis answered): what producers and gateways count on too. A gateway is a real
``rerankq gateway`` subprocess; it is ready once ``/healthz`` answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis

from rerankq.core.constants import WORKERS_KEY, worker_process
from rerankq.core.redis_clients import connect
from rerankq.core.settings import Settings
from rerankq.testing.local_redis import free_port, local_redis_server
from rerankq.testing.waiting import wait_until


@dataclass
class LoggedProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class WorkerProcess(LoggedProcess):
    model: str
    redis_url: str  # where the worker writes its presence
    sentinel_master: str

    def presence_id(self) -> str | None:
        """The worker id of this process's presence entry; None while it has none (not consuming,
        or Redis, or a sentinel that does not know its primary yet, cannot say)."""
        try:
            with closing(connect(self.redis_url, self.sentinel_master, socket_connect_timeout=2)) as client:
                entries = [entry.decode() for entry in cast(list[bytes], client.hkeys(WORKERS_KEY))]
        except redis.ConnectionError:
            return None
        return next(
            (entry for entry in entries if worker_process(entry) == (self.process.pid, socket.gethostname())), None
        )


def start_worker(
    model: str, log_path: Path, *args: str, device: str = "cpu", env: dict[str, str] | None = None
) -> WorkerProcess:
    """``rerankq worker --model MODEL --device DEVICE ARGS...`` with ``env`` added to ours."""
    environment = {**os.environ, **(env or {})}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "rerankq", "worker", "--model", model, "--device", device, *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    url = args[args.index("--redis-url") + 1] if "--redis-url" in args else _setting(environment, "redis_url")
    return WorkerProcess(process, log_path, model, url, _setting(environment, "redis_sentinel_master"))


def _setting(environment: dict[str, str], field: str) -> str:
    return environment.get(f"RERANKQ_{field.upper()}") or str(Settings.model_fields[field].default)


def wait_until_consuming(worker: WorkerProcess, timeout: float = 120) -> None:
    """Until the worker's presence entry is in Redis; the log's tail when it exits or times out first."""
    wait_until(
        lambda: _alive(worker, "worker") and worker.presence_id() is not None, timeout, lambda: worker.log()[-4000:]
    )


def _alive(process: LoggedProcess, what: str) -> bool:
    if process.process.poll() is not None:
        raise RuntimeError(f"{what} exited:\n{process.log()[-4000:]}")
    return True


def stop_worker(worker: WorkerProcess, timeout: float = 20) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL if it does not finish in time."""
    stop_process(worker.process, timeout)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class GatewayProcess(LoggedProcess):
    url: str


def start_gateway(log_path: Path, *args: str, env: dict[str, str] | None = None) -> GatewayProcess:
    """``rerankq gateway --port <free port> ARGS...`` on 127.0.0.1, ready on return."""
    port = free_port()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "rerankq", "gateway", "--port", str(port), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    gateway = GatewayProcess(process, log_path, f"http://127.0.0.1:{port}")
    wait_until_serving(gateway)
    return gateway


def wait_until_serving(gateway: GatewayProcess, timeout: float = 60) -> None:
    """Until ``/healthz`` answers; the log's tail in the error when the process exits first."""
    wait_until(
        lambda: _alive(gateway, "gateway") and _answers(f"{gateway.url}/healthz"),
        timeout,
        lambda: gateway.log()[-4000:],
    )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except (urllib.error.URLError, ConnectionError):
        return False


@contextmanager
def running_workers(
    model: str, log_dir: Path, count: int = 1, *args: str, device: str = "cpu", env: dict[str, str] | None = None
) -> Iterator[list[WorkerProcess]]:
    """``count`` workers for one model, started together, ready on entry, stopped on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = [start_worker(model, log_dir / f"worker-{i}.log", *args, device=device, env=env) for i in range(count)]
    try:
        for worker in workers:
            wait_until_consuming(worker, timeout=600)
        yield workers
    finally:
        for worker in workers:
            stop_worker(worker)


@contextmanager
def redis_for_run(url: str | None = None) -> Iterator[str]:
    """``url``, else RERANKQ_REDIS_URL when set, else a throwaway redis-server of our own."""
    if given := given_redis(url):
        yield given
        return
    try:
        with local_redis_server() as server:
            yield server.url
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e


def given_redis(url: str | None = None) -> str | None:
    """The Redis the user gave (``url``, else RERANKQ_REDIS_URL), which a run uses and leaves running."""
    return url or os.environ.get("RERANKQ_REDIS_URL") or None
