"""Worker and gateway processes started and stopped from Python: for the demo, the benchmarks
and the tests.

Each worker is a real ``rerankq worker`` subprocess logging to a file; it is ready once Celery
logs that it consumes (after the model loaded and warmed up). A gateway is a real
``rerankq gateway`` subprocess; it is ready once ``/healthz`` answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rerankq.local_redis import free_port, local_redis_server


@dataclass
class LoggedProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class WorkerProcess(LoggedProcess):
    model: str


def start_worker(
    model: str, log_path: Path, *args: str, device: str = "cpu", env: dict[str, str] | None = None
) -> WorkerProcess:
    """``rerankq worker --model MODEL --device DEVICE ARGS...`` with ``env`` added to ours."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "rerankq", "worker", "--model", model, "--device", device, *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    return WorkerProcess(process, log_path, model)


def wait_until_consuming(worker: WorkerProcess, timeout: float = 120) -> None:
    """Ready means Celery logged that it is consuming (after the model loaded and warmed up)."""
    deadline = time.monotonic() + timeout
    while " ready." not in worker.log():
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker for {worker.model} exited:\n{worker.log()[-4000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker for {worker.model} not ready after {timeout:.0f}s:\n{worker.log()[-4000:]}")
        time.sleep(0.1)


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
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{gateway.url}/healthz", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            if gateway.process.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{gateway.log()[-4000:]}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not serving after {timeout:.0f}s:\n{gateway.log()[-4000:]}") from None
            time.sleep(0.1)


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
    if url or "RERANKQ_REDIS_URL" in os.environ:
        yield url or os.environ["RERANKQ_REDIS_URL"]
        return
    try:
        with local_redis_server() as server:
            yield server.url
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
