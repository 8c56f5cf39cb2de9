"""``rerankq serve``: one command, real processes (a private redis-server, workers, the gateway,
the exporter). It answers a Cohere-shaped request, Ctrl-C and SIGTERM leave no child behind, a
dead child is named and makes serve exit non-zero, and a configured Redis is never replaced by a
private one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from rerankq.testing.local_redis import free_port
from rerankq.testing.waiting import wait_until

pytestmark = pytest.mark.slow
STOPPED_WITHIN_S = 10  # the promise: every child stopped within 10 s of Ctrl-C or SIGTERM


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines_of(self, name: str) -> list[str]:
        return [line for line in self.output().splitlines() if line.startswith(f"{name:<10}| ")]


def start_serve(log_path: Path, *args: str, env: dict[str, str] | None = None) -> Serve:
    """Started as a shell's background job is (``rerankq serve &``): SIGINT ignored on entry, which
    Python then leaves ignored unless serve handles it itself."""
    port = free_port()
    command = [sys.executable, "-m", "rerankq", "serve", "--device", "cpu", "--port", str(port), *args]
    with log_path.open("wb") as log:
        environment = {**os.environ, **(env or {})}
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, preexec_fn=_as_a_background_job
        )
    return Serve(process, log_path, port)


def _as_a_background_job() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def serving(log_path: Path, *args: str) -> Iterator[Serve]:
    serve = start_serve(log_path, "--redis", "local", "--exporter-port", str(free_port()), *args)
    try:
        wait_until(lambda: _ready_or_exited(serve), 300, lambda: serve.output()[-4000:])
        assert serve.process.poll() is None, serve.output()[-4000:]
        yield serve
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()


def _ready_or_exited(serve: Serve) -> bool:
    return serve.process.poll() is not None or any("ready: http://" in line for line in serve.lines_of("serve"))


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc (children, theirs, ...)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def private_redis_url(serve: Serve) -> str:
    said = next(line for line in serve.lines_of("serve") if "a private redis-server at" in line)
    return said.split("a private redis-server at ")[1].split(",")[0]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_answers_a_cohere_request_and_a_stop_leaves_no_child(
    model_dirs: dict[str, Path], tmp_path: Path, stop_signal: signal.Signals
) -> None:
    folder = model_dirs["tiny-bert"]
    with serving(tmp_path / "serve.log", "--model", str(folder), "--workers", "2") as serve:
        children = descendants(serve.process.pid)
        url = private_redis_url(serve)
        # no "model": the served model is the gateway's default (RERANKQ_DEFAULT_MODEL set for it)
        body = {"query": "capital of France", "documents": ["Berlin is in Germany.", "Paris is in France."]}
        answer = httpx.post(f"http://127.0.0.1:{serve.port}/v1/rerank", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        assert sorted(result["index"] for result in answer.json()["results"]) == [0, 1]
        workers = {line.split("|")[0].strip() for line in serve.output().splitlines() if line.startswith("worker-")}
        assert workers == {"worker-1", "worker-2"}  # --workers passes through, each output prefixed
        assert {"redis", "gateway", "exporter"} <= {line.split("|")[0].strip() for line in serve.output().splitlines()}
        assert len(children) >= 5  # redis, two workers, the gateway, the exporter
        worker_output = "\n".join(serve.lines_of("worker-1"))
        assert "superuser privileges" not in worker_output  # Celery's ten lines as root, replaced by one
        assert ("running as root" in worker_output) == (os.geteuid() == 0)

        serve.process.send_signal(stop_signal)
        assert serve.process.wait(STOPPED_WITHIN_S) == 0, serve.output()[-3000:]
    assert not [pid for pid in children if alive(pid)], serve.output()[-3000:]
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()  # the private Redis went with it


def test_a_dead_child_is_named_and_serve_exits_non_zero(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    with serving(tmp_path / "serve.log", "--model", str(model_dirs["tiny-bert"])) as serve:
        children = descendants(serve.process.pid)
        worker = next(pid for pid in children if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes())
        os.kill(worker, signal.SIGKILL)
        code = serve.process.wait(STOPPED_WITHIN_S + 5)
        assert code != 0
        assert any("worker-1 exited with code -9; stopping the others" in line for line in serve.lines_of("serve"))
    assert not [pid for pid in children if alive(pid)], serve.output()[-3000:]


def test_a_configured_redis_that_does_not_answer_is_never_replaced(tmp_path: Path) -> None:
    """RERANKQ_REDIS_URL set and down: one line naming it, exit 3, nothing started; with --redis
    auto too (auto falls back to a private Redis only when no URL was configured)."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    for extra in ((), ("--redis", "auto")):
        serve = start_serve(
            tmp_path / "serve.log", "--model", "all-minilm-l6-v2", *extra, env={"RERANKQ_REDIS_URL": url}
        )
        assert serve.process.wait(60) == 3, serve.output()
        said = serve.output()
        assert f"Redis at {url}" in said and "unreachable" in said, said
        assert "private redis-server" not in said and "worker-1" not in said and "Traceback" not in said
