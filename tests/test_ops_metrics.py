"""Operations: worker metrics, the exporter's queue depths, `rerankq status`, slow-job warnings,
and several worker processes of one model sharing the work (real processes, real Redis)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from rerankq import RerankClient
from rerankq.cli.redis_snapshot import read_snapshot
from rerankq.core.aliases import delete_alias, set_alias
from rerankq.core.constants import WORKERS_KEY, alias_history_key
from rerankq.core.live_workers import WorkerPresence
from rerankq.core.settings import Settings
from rerankq.testing.local_redis import free_port
from rerankq.testing.processes import running_workers, start_gateway, stop_process
from rerankq.testing.waiting import wait_until

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def metrics_worker(
    model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int, Path]]:
    """A tiny-BERT worker serving its metrics on a port, with a slow-job threshold every job breaks."""
    name, port = "tiny-metrics", free_port()
    logs = tmp_path_factory.mktemp("metrics-worker")
    args = ("--name", name, "--concurrency", "4", "--metrics-port", str(port))
    with running_workers(str(model_dirs["tiny-bert"]), logs, 1, *args, env={"RERANKQ_SLOW_JOB_MS": "0.001"}):
        yield name, port, logs / "worker-0.log"


def test_a_worker_serves_its_metrics(metrics_worker: tuple[str, int, Path], client: RerankClient) -> None:
    name, port, _ = metrics_worker
    for i in range(3):
        client.rank(f"metrics query {i} {time.monotonic_ns()}", ["one doc", "two docs"], model=name)
    samples = scrape(port)
    assert value(samples, "rerankq_jobs_total", model=name, lane="interactive", outcome="succeeded") == 3
    assert value(samples, "rerankq_job_documents_total", model=name, source="model") == 6
    assert value(samples, "rerankq_queue_wait_seconds_count", model=name, lane="interactive") == 3
    assert value(samples, "rerankq_top_score_count", model=name) == 3
    assert value(samples, "rerankq_batch_pairs_sum", model=name, device="cpu") == 6
    padded = value(samples, "rerankq_tokens_total", model=name, kind="padded")
    assert padded >= value(samples, "rerankq_tokens_total", model=name, kind="real") > 0
    assert value(samples, "rerankq_token_budget", model=name, device="cpu") == client.settings.token_budget
    assert value(samples, "rerankq_model_load_seconds", model=name, device="cpu", backend="torch") > 0


def test_a_job_over_the_slow_threshold_is_a_warning_line(
    metrics_worker: tuple[str, int, Path], client: RerankClient
) -> None:
    name, _, log = metrics_worker
    job_id = client.submit(f"slow? {time.monotonic_ns()}", ["a", "b"], model=name).result(timeout=30).job_id
    line = next(line for line in log.read_text().splitlines() if job_id in line and "{" in line)
    assert " WARNING " in line
    fields = json.loads(line[line.index("{") :])
    assert fields["event"] == "slow_job" and fields["lane"] == "interactive" and fields["pairs"] == 2


def test_two_worker_processes_share_the_work_and_the_exporter_sums_them(
    model_dirs: dict[str, Path], tmp_path: Path, client: RerankClient
) -> None:
    """Multiprocess mode: both workers write to one folder; the exporter serves the sum, and the
    queue depth of a lane nobody consumes."""
    name, port = "tiny-multi", free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    (tmp_path / "prom").mkdir()
    args = ("--name", name, "--concurrency", "2", "--lanes", "interactive")
    with running_workers(str(model_dirs["tiny-bert"]), tmp_path / "logs", 2, *args, env=env) as workers:
        exporter = subprocess.Popen(
            [sys.executable, "-m", "rerankq", "exporter", "--port", str(port), "--host", "127.0.0.1"],
            env={**os.environ, **env},
        )
        try:
            handles = [client.submit(f"shared {i} {time.monotonic_ns()}", ["x y", "z"], model=name) for i in range(24)]
            assert all(handle.result(timeout=60).results for handle in handles)
            for i in range(5):
                client.dispatch(client.build(f"waiting {i}", ["doc"], lane="bulk", model=name))
            set_alias(client.app.backend.client, "multi-gray", {name: 75, "tiny-bert": 25})
            wait_until(lambda: _reachable(port), timeout=30)
            samples = scrape(port)
        finally:
            delete_alias(client.app.backend.client, "multi-gray")
            client.app.backend.client.delete(alias_history_key("multi-gray"))
            exporter.terminate()
            exporter.wait(10)
        logs = [worker.log() for worker in workers]
    assert all('"job_done"' in log for log in logs), "a worker took no job"
    assert value(samples, "rerankq_jobs_total", model=name, lane="interactive", outcome="succeeded") == 24
    assert value(samples, "rerankq_queue_waiting", model=name, lane="bulk") == 5
    assert value(samples, "rerankq_queue_depth", model=name, lane="bulk") == 5
    assert value(samples, "rerankq_lane_workers", model=name, lane="interactive") == 2
    assert value(samples, "rerankq_lane_workers", model=name, lane="bulk") == 0
    assert value(samples, "rerankq_redis_up") == 1
    assert value(samples, "rerankq_alias_share", alias="multi-gray", model=name) == 75


def _reachable(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def test_queue_depth_counts_jobs_workers_hold(redis_server: object, settings: Settings) -> None:
    """Held jobs come from the workers' presence entries (here, one a test writes as a worker would)."""
    broker = redis.Redis.from_url(settings.redis_url)
    ghost = WorkerPresence("ghost@test", "tiny-ghost", ("interactive", "bulk"), "cpu", "id", time.time(), {"bulk": 3})
    broker.hset(WORKERS_KEY, ghost.worker_id, ghost.to_json())
    try:
        lanes = {(lane.model, lane.lane): lane for lane in read_snapshot(broker, settings).lanes}
    finally:
        broker.hdel(WORKERS_KEY, ghost.worker_id)
    bulk = lanes[("tiny-ghost", "bulk")]
    assert (bulk.waiting, bulk.held, bulk.depth, bulk.workers) == (0, 3, 3, 1)
    assert lanes[("tiny-ghost", "cpu")].workers == 0


def test_status_lists_workers_lanes_and_the_cache(workers: dict, client: RerankClient) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rerankq", "status", "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert {"tiny-bert", "tiny-xlmr", "all-minilm-l6-v2"} <= {w["model"] for w in status["workers"]}
    lane = next(lane for lane in status["lanes"] if lane["model"] == "tiny-bert" and lane["lane"] == "interactive")
    assert lane["workers"] >= 1 and lane["depth"] == lane["waiting"] + lane["held"]
    assert set(status["cache"]) == {"hits", "misses", "hit_ratio"} and isinstance(status["aliases"], dict)
    table = subprocess.run([sys.executable, "-m", "rerankq", "status"], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "queues" in table.stdout and "cache:" in table.stdout


def test_flower_sees_the_workers_and_their_queues_behind_basic_auth_and_no_text(
    workers: dict, tmp_path: Path, client: RerankClient
) -> None:
    """Flower (the real one) shows the workers' queues, and the jobs it hears of without their
    query or document text, even for a job that asked for its documents back."""
    port = free_port()
    env = {**os.environ, "RERANKQ_FLOWER_BASIC_AUTH": "ops:flower-secret"}
    command = [sys.executable, "-m", "rerankq", "flower", "--port", str(port)]
    flower = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    credentials = base64.b64encode(b"ops:flower-secret").decode()

    def api(path: str) -> Any:
        request = urllib.request.Request(base + path, headers={"Authorization": f"Basic {credentials}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    try:
        wait_until(lambda: _status(f"{base}/api/workers") == 401, timeout=60)  # up, and closed without credentials
        seen = api("/api/workers?refresh=1")
        secret = "flower-must-not-see-this-text"
        handle = client.submit(
            f"query {secret}", [f"document {secret}", "another"], model="tiny-bert", return_documents=True
        )
        assert handle.result(timeout=60).results[0].document is not None  # the text does come back to the caller
        wait_until(lambda: api(f"/api/task/info/{handle.id}").get("state") == "SUCCESS", timeout=30)
        shown = json.dumps([api(f"/api/task/info/{handle.id}"), api("/api/tasks")])
    finally:
        flower.terminate()
        flower.wait(10)
    tiny = next(info for name, info in seen.items() if name.startswith("rerankq-tiny-bert-"))
    assert "rerankq.tiny-bert.interactive" in {queue["name"] for queue in tiny["active_queues"]}
    assert handle.id in shown and secret not in shown


def test_flower_refuses_an_open_address_without_auth() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RERANKQ_FLOWER_BASIC_AUTH"}
    command = [sys.executable, "-m", "rerankq", "flower", "--host", "0.0.0.0", "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "RERANKQ_FLOWER_BASIC_AUTH" in done.stderr


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def test_a_gateway_of_several_processes_serves_their_summed_metrics(
    workers: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever process answers the scrape, /metrics counts the requests all of them served."""
    # unset, not empty: the gateway picks its own folder (prometheus-client would take an empty
    # value for the current directory and leave its files there)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    gateway = start_gateway(tmp_path / "gateway.log", "--workers", "2", env={"RERANKQ_PUBLIC_METRICS": "true"})
    port = int(gateway.url.rsplit(":", 1)[1])
    models = {"endpoint": "/v1/models", "method": "GET", "status": "200"}
    try:
        before = value(scrape(port), "rerankq_gateway_requests_total", **models)
        for _ in range(20):
            with urllib.request.urlopen(f"{gateway.url}/v1/models", timeout=10):
                pass
        # a request is counted once its response has gone out: the last one may land a moment later
        wait_until(lambda: value(scrape(port), "rerankq_gateway_requests_total", **models) >= before + 20, timeout=10)
        counts = [value(scrape(port), "rerankq_gateway_requests_total", **models) for _ in range(4)]
    finally:
        stop_process(gateway.process)
    assert counts == [before + 20] * 4
