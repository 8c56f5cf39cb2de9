"""One delivery suite, two brokers: each drill runs on Redis and on RabbitMQ, against real servers
and real worker processes. A worker killed with -9, a worker frozen with SIGSTOP and woken, the
broker restarted with jobs in flight, a job that keeps killing its worker, lanes in order, and a
burst of 200 clients. Each RabbitMQ run has a virtual host of its own, deleted afterwards.

All RabbitMQ drills live in this one file: pytest-xdist (``--dist loadfile``) runs a file in one
process, so the broker restart here never cuts another test's connections.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from gateway_support import AUTH, GATEWAY_ENV, app_client
from worker_support import paused

from rerankq import BrokerUnavailable, JobFailed, JobHandle, JobStatus, JobTimeout, RerankClient
from rerankq.cli.exporter import FleetCollector
from rerankq.cli.redis_snapshot import read_snapshot_once
from rerankq.core.constants import CLAIMANTS_KEY, WORKERS_KEY
from rerankq.core.settings import Settings, get_settings
from rerankq.testing.local_redis import RedisProcess
from rerankq.testing.processes import (
    GatewayProcess,
    WorkerProcess,
    start_gateway,
    start_worker,
    stop_process,
    stop_worker,
    wait_until_consuming,
)
from rerankq.testing.rabbitmq import rabbitmq_vhost, start_rabbitmq, stop_rabbitmq
from rerankq.testing.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.delivery]
BROKERS = ("redis", "rabbitmq")


@dataclass
class Broker:
    """Where a drill's jobs travel: Redis alone, or RabbitMQ with results in Redis."""

    kind: str
    redis_url: str
    broker_url: str | None = None
    stop: Callable[[], None] = field(default=lambda: None)  # the broker down (restartable_broker)
    start: Callable[[], None] = field(default=lambda: None)  # and up again

    @property
    def env(self) -> dict[str, str]:
        on_rabbitmq = {"RERANKQ_BROKER_URL": self.broker_url} if self.broker_url else {}
        return {"RERANKQ_REDIS_URL": self.redis_url} | on_rabbitmq

    def settings(self) -> Settings:
        return get_settings().updated(redis_url=self.redis_url, broker_url=self.broker_url)

    def client(self) -> RerankClient:
        return RerankClient(settings=self.settings())

    def store(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, redis_server: Any) -> Iterator[Broker]:
    """The session's Redis alone, or a RabbitMQ virtual host of its own with results in it."""
    if request.param == "redis":
        yield Broker("redis", redis_server.url)
        return
    with rabbitmq_vhost() as url:
        yield Broker("rabbitmq", redis_server.url, url)


@contextmanager
def restartable_broker(kind: str, tmp_path: Path, redis_url: str) -> Iterator[Broker]:
    """A broker a drill may stop and start: a Redis server of its own (append-only file on, as in
    production), or the local RabbitMQ itself (stop_app / start_app, a vhost of its own)."""
    if kind == "redis":
        (tmp_path / "redis").mkdir()
        server = RedisProcess(tmp_path / "redis", appendonly=True)
        server.start()
        try:
            yield Broker("redis", server.url, stop=server.kill, start=server.start)
        finally:
            server.stop()
        return
    with rabbitmq_vhost() as url:
        yield Broker("rabbitmq", redis_url, url, stop=stop_rabbitmq, start=start_rabbitmq)


def gateway_env(broker: Broker, model: str) -> dict[str, str]:
    return {**GATEWAY_ENV, **broker.env, "RERANKQ_DEFAULT_MODEL": model}


def _exited_or_failed(process: WorkerProcess, job: JobHandle) -> bool:
    return process.process.poll() is not None or job.status() == "failed"


def jobs(n: int, tag: str, documents: int = 8) -> list[tuple[str, list[str]]]:
    texts = [[f"{tag} document {i}-{j} on delivery" * 4 for j in range(documents)] for i in range(n)]
    return [(f"{tag} query {i}", texts[i]) for i in range(n)]


def received(worker: WorkerProcess) -> set[str]:
    """The job ids a worker took off its queues (Celery logs each as it arrives)."""
    log = worker.log()
    return {line.split("[", 1)[1].split("]", 1)[0] for line in log.splitlines() if "] received" in line}


def served_by(worker: WorkerProcess, result: Any) -> bool:
    return all(f":{worker.process.pid}:" in batch for batch in result.stats.batches)


def scores(results: Any) -> list[tuple[int, float]]:
    return [(ranked.index, round(ranked.score, 5)) for ranked in results]


def worker(model_dirs: dict[str, Path], log: Path, model: str, broker: Broker, *args: str, **env: str) -> WorkerProcess:
    process = start_worker(str(model_dirs["tiny-bert"]), log, "--name", model, *args, env=broker.env | env)
    wait_until_consuming(process)
    return process


# --- a worker killed with -9 ----------------------------------------------------------------------


def test_a_worker_killed_with_sigkill_has_every_job_finished_by_another(
    broker: Broker, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Default settings, two workers. The jobs the killed one held and had not finished are
    finished by the other, with the scores an undisturbed run gives. On RabbitMQ the broker
    gives them back when the connection drops; on Redis the other worker's sweep does, once the
    dead one's heartbeat is three presence intervals old. (Time to recovery is printed, never
    asserted; `rerankq bench brokers` measures it.)"""
    model = f"killed-{uuid.uuid4().hex[:6]}"
    first = worker(model_dirs, tmp_path / "first.log", model, broker)
    second = worker(model_dirs, tmp_path / "second.log", model, broker)
    sent = jobs(40, "sigkill", documents=16)
    with broker.client() as client:
        try:
            handles = [client.submit(query, documents, model=model, cache=False) for query, documents in sent]
            wait_until(lambda: len(received(first)) >= 4, timeout=60)
            first.process.kill()
            first.process.wait()
            killed_at = time.monotonic()
            stranded = received(first) - {h.id for h in handles if h.status() == JobStatus.SUCCEEDED}
            results = [handle.result(timeout=90) for handle in handles]
            recovered_s = time.monotonic() - killed_at
            expected = [client.rank(q, d, model=model, cache=False, timeout=60) for q, d in sent]
        finally:
            stop_worker(second)
    assert [scores(r.results) for r in results] == [scores(e) for e in expected]
    assert stranded  # the kill left jobs in flight, and each was finished by the survivor
    assert all(served_by(second, r) for r in results if r.job_id in stranded)
    if broker.kind == "redis":  # the sweep removed the dead worker's claims
        claimants = [key.decode() for key in broker.store().smembers(CLAIMANTS_KEY)]
        assert not [claimant for claimant in claimants if f"-{first.process.pid}@" in claimant]
    print(f"\n{broker.kind}: {len(stranded)} stranded jobs finished {recovered_s:.1f} s after SIGKILL")


# --- a frozen worker --------------------------------------------------------------------------------


def test_a_frozen_worker_is_given_up_on_and_corrupts_nothing_when_it_wakes(
    broker: Broker, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """SIGSTOP for longer than the liveness timeout (Redis: three presence intervals; RabbitMQ:
    the AMQP heartbeat, after which the broker closes the connection): its unfinished jobs are
    finished by the other worker. SIGCONT: its late results change nothing (the first result
    stands, with the same scores), and it rejoins and serves again."""
    model = f"frozen-{uuid.uuid4().hex[:6]}"
    env = {"RERANKQ_PRESENCE_INTERVAL_S": "1", "RERANKQ_BROKER_HEARTBEAT_S": "2"}
    frozen = worker(model_dirs, tmp_path / "frozen.log", model, broker, **env)
    store = broker.store()
    with broker.client() as client:
        handles = [client.submit(q, d, model=model, cache=False) for q, d in jobs(24, "frozen", documents=16)]
        wait_until(lambda: len(received(frozen)) >= 2, timeout=60)
        os.kill(frozen.process.pid, signal.SIGSTOP)
        taken = received(frozen) - {h.id for h in handles if h.status() == JobStatus.SUCCEEDED}
        other = worker(model_dirs, tmp_path / "other.log", model, broker, **env)
        try:
            first = {handle.id: handle.result(timeout=90) for handle in handles}
            os.kill(frozen.process.pid, signal.SIGCONT)
            wait_until(lambda: frozen.presence_id() is not None and _fresh(store, frozen), timeout=60)
            again = {handle.id: handle.result(timeout=30) for handle in handles}
            served = client.submit("after waking", ["a", "b"], model=model, cache=False).result(timeout=60)
        finally:
            stop_worker(other)
            stop_worker(frozen)
    assert again == first  # the first result stands
    assert taken and all(served_by(other, first[job_id]) for job_id in taken)
    assert len(served.results) == 2


def _fresh(store: redis.Redis, process: WorkerProcess) -> bool:
    """Its presence entry was written within the last two seconds: it beats again."""
    entry = store.hget(WORKERS_KEY, process.presence_id() or "")
    return entry is not None and time.time() - json.loads(entry)["seen_at"] < 2


# --- the broker restarted ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BROKERS)
def test_the_broker_restarted_mid_run(
    kind: str, model_dirs: dict[str, Path], tmp_path: Path, redis_server: Any
) -> None:
    """The broker goes down mid-run and comes back. While it is down the SDK raises
    BrokerUnavailable and the gateway answers 503. Every job sent before completes or fails with
    a clear error within its timeout; on RabbitMQ (durable queues, persistent messages,
    confirmed sends) every one completes. Afterwards the worker, the gateway and the SDK serve
    again without a restart."""
    with restartable_broker(kind, tmp_path, redis_server.url) as broker, ExitStack() as stack:
        model = "restart-model"
        running = worker(model_dirs, tmp_path / "worker.log", model, broker)
        stack.callback(stop_worker, running)
        gateway = start_gateway(tmp_path / "gateway.log", env=gateway_env(broker, model))
        stack.callback(stop_process, gateway.process)
        client = stack.enter_context(broker.client())
        http = stack.enter_context(httpx.Client(base_url=gateway.url, headers=AUTH))
        documents = [f"document {i} about queues" for i in range(16)]
        handles = [client.submit(f"before {i}", documents, model=model, cache=False) for i in range(20)]
        broker.stop()
        try:
            with pytest.raises(BrokerUnavailable, match="while sending a job"):
                client.submit("while down", documents, model=model, cache=False)
            down = http.post("/v1/rerank", json={"query": "while down", "documents": documents}, timeout=30)
        finally:
            broker.start()
        # on RabbitMQ the worker's consumer stops with the broker, so it is no longer counted either
        refusals = {"unavailable"} if kind == "redis" else {"unavailable", "no_workers"}
        assert down.status_code == 503 and down.json()["error_type"] in refusals and "Retry-After" in down.headers
        deadline = time.monotonic() + 30  # one budget for all: a lost job costs its wait once
        outcomes = [_outcome(handle, deadline) for handle in handles]
        assert all(outcome in ("ok", "clear error") for outcome in outcomes), outcomes
        assert outcomes.count("ok") == len(handles) if kind == "rabbitmq" else outcomes.count("ok") >= 1
        after = client.submit("after the restart", documents, model=model, cache=False).result(timeout=60)
        assert len(after.results) == len(documents)
        wait_until(lambda: _serves(http, documents), timeout=30)  # the gateway serves again
        del handles  # their results unsubscribe on collection: while this Redis still runs
        gc.collect()


def _outcome(handle: JobHandle, deadline: float) -> str:
    timeout = max(1.0, deadline - time.monotonic())
    started = time.monotonic()
    try:
        result = handle.result(timeout=timeout)
    except (JobTimeout, JobFailed, BrokerUnavailable):
        assert time.monotonic() - started < timeout + 15  # never hangs past its timeout
        return "clear error"
    return "ok" if len(result.results) == 16 else "wrong"


def _serves(http: httpx.Client, documents: list[str]) -> bool:
    response = http.post("/v1/rerank", json={"query": "after", "documents": documents}, timeout=30)
    assert response.status_code in (200, 503), response.text  # only the documented refusal meanwhile
    return response.status_code == 200


# --- a poison job -----------------------------------------------------------------------------------

POISON = "poison-pill"
POISON_ENV = {
    "RERANKQ_FAULT_CRASH_MARKER": POISON,  # a job whose query holds this kills its worker mid-job
    "RERANKQ_PRESENCE_INTERVAL_S": "0.5",  # Redis: the next worker gives the crashed one's jobs back in seconds
}


def test_a_job_that_keeps_killing_its_worker_fails_after_the_cap(
    broker: Broker, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Each crash puts the job back, redelivered (RabbitMQ: the broker, as the connection drops;
    Redis: the next worker's sweep); a supervisor restarts the worker; the fourth delivery fails
    the job (RERANKQ_MAX_DELIVERIES=3) with the reason, instead of crashing forever. On RabbitMQ's
    quorum queues the broker's own cap (x-delivery-limit 3) stands behind that one. The healthy
    job beside it is served."""
    model = f"poison-{uuid.uuid4().hex[:6]}"
    crashes = 0
    with broker.client() as client:
        for attempt in range(6):
            # a restarted worker may take the job and die before it says it consumes: no wait on that
            options = ("--name", model, "--concurrency", "1")
            log = tmp_path / f"w{attempt}.log"
            process = start_worker(str(model_dirs["tiny-bert"]), log, *options, env=broker.env | POISON_ENV)
            if attempt == 0:  # a name is known once a worker serves it
                wait_until_consuming(process)
                poison = client.submit(f"{POISON} query", ["doc"], model=model, cache=False)
                healthy = client.submit("healthy query", ["doc a", "doc b"], model=model, cache=False)
            wait_until(partial(_exited_or_failed, process, poison), timeout=120)
            if process.process.poll() is None:
                break
            crashes += 1
        try:
            with pytest.raises(JobFailed, match=r"delivered 4 times \(cap 3\)"):
                poison.result(timeout=30)
            assert len(healthy.result(timeout=30).results) == 2
        finally:
            stop_worker(process)
    assert crashes == 3
    assert '"event": "fault_crash"' in (tmp_path / "w0.log").read_text()


# --- lanes --------------------------------------------------------------------------------------------


def test_interactive_jobs_come_before_a_bulk_backlog_and_the_broker_counts_both(
    broker: Broker, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Twenty bulk jobs, then five interactive ones, wait while no worker runs: `rerankq status`'s
    snapshot counts each lane from the broker. A worker taking one job at a time then finishes
    the interactive ones first: on Redis strictly (it takes the most urgent lane first), on
    RabbitMQ within the lane gate's check interval (it stops consuming bulk while interactive
    jobs wait, checked as each bulk job arrives: what it held before, one or two bulk jobs, runs first)."""
    model = f"lanes-{uuid.uuid4().hex[:6]}"
    stop_worker(worker(model_dirs, tmp_path / "namer.log", model, broker))  # the name is known from now on
    with broker.client() as client:
        long_documents = [f"bulk doc {j}" * 20 for j in range(48)]
        bulk = [client.submit(f"bulk {i}", long_documents, model=model, lane="bulk", cache=False) for i in range(20)]
        interactive = [client.submit(f"interactive {i}", ["a", "b"], model=model, cache=False) for i in range(5)]
        assert waiting_by_lane(broker, model) == {"interactive": 5, "bulk": 20, "cpu": 0}
        running = worker(model_dirs, tmp_path / "worker.log", model, broker, "--concurrency", "1")
        try:
            for handle in [*interactive, *bulk]:
                handle.result(timeout=120)
        finally:
            stop_worker(running)
    done = [json.loads(line[line.index("{") :]) for line in running.log().splitlines() if '"job_done"' in line]
    lanes = [event["lane"] for event in done]
    last_interactive = max(place for place, lane in enumerate(lanes) if lane == "interactive")
    assert lanes[: last_interactive + 1].count("bulk") <= (0 if broker.kind == "redis" else 2), lanes


def waiting_by_lane(broker: Broker, model: str) -> dict[str, int]:
    """What `rerankq status` and the exporter read: jobs waiting per lane, counted by the broker."""
    lanes = read_snapshot_once(broker.settings(), scan_queues=True).lanes
    return {lane.lane: lane.waiting for lane in lanes if lane.model == model}


ADMISSION_LIMIT, ADMISSION_REQUESTS = 30, 300


async def test_300_concurrent_requests_never_queue_past_the_lanes_limit(
    broker: Broker, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The lane's only worker stops taking jobs; 300 async jobs are posted at once to a gateway
    whose limit is 30: some are accepted, none past the limit (RabbitMQ's count joins Redis's
    reservations, see rerankq.gateway.admission), the rest get 429, and exactly the accepted
    ones wait in the broker. Then the worker takes them again and each completes."""
    model = f"admit-{uuid.uuid4().hex[:6]}"
    running = worker(model_dirs, tmp_path / "worker.log", model, broker)
    overrides = {"redis_url": broker.redis_url, "broker_url": broker.broker_url, "default_model": model}
    try:
        with broker.client() as client, paused(client, model):
            async with app_client(max_queue_depth=ADMISSION_LIMIT, **overrides) as gateway:
                body = {"query": "admission", "documents": ["a", "b"]}
                posted = [
                    gateway.post("/v1/jobs", json=body | {"query": f"admission {i}"}) for i in range(ADMISSION_REQUESTS)
                ]
                responses = await asyncio.gather(*posted)
            accepted = [r.json()["id"] for r in responses if r.status_code == 202]
            refused = [r for r in responses if r.status_code == 429]
            assert len(accepted) + len(refused) == ADMISSION_REQUESTS
            assert 0 < len(accepted) <= ADMISSION_LIMIT
            assert all(r.json()["error_type"] == "queue_full" for r in refused)
            assert waiting_by_lane(broker, model)["interactive"] == len(accepted)
        with broker.client() as client:  # resumed on leaving `paused`
            assert all(client.job(job_id).result(timeout=60).model == model for job_id in accepted)
    finally:
        stop_worker(running)


def test_status_the_exporter_and_a_bulk_run_work_on_either_broker(
    broker: Broker, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """With no worker up, three bulk jobs wait: `rerankq status --json` and the exporter's
    `rerankq_queue_waiting` count them from the broker. Then a worker serves them and a
    `rank_many` run of its own."""
    model = f"tools-{uuid.uuid4().hex[:6]}"
    stop_worker(worker(model_dirs, tmp_path / "namer.log", model, broker))  # the name is known from now on
    with broker.client() as client:
        waiting = [client.submit(f"q {i}", ["a", "b"], model=model, lane="bulk", cache=False) for i in range(3)]
    status = subprocess.run(
        [sys.executable, "-m", "rerankq", "status", "--json"],
        env=os.environ | broker.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    lanes = {(lane["model"], lane["lane"]): lane["waiting"] for lane in json.loads(status.stdout)["lanes"]}
    assert lanes[(model, "bulk")] == 3 and lanes[(model, "interactive")] == 0
    collector = FleetCollector(broker.settings())
    samples = {(s.name, tuple(s.labels.values())): s.value for family in collector.collect() for s in family.samples}
    assert samples[("rerankq_queue_waiting", (model, "bulk"))] == 3 and samples[("rerankq_redis_up", ())] == 1
    running = worker(model_dirs, tmp_path / "worker.log", model, broker)
    try:
        with broker.client() as client:
            assert all(len(handle.result(timeout=60).results) == 2 for handle in waiting)
            records = [{"id": i, "query": f"record {i}", "documents": ["x", "y", "z"]} for i in range(6)]
            results = list(client.rank_many(records, model=model, max_in_flight=2))
    finally:
        stop_worker(running)
    assert sorted(result.id for result in results) == list(range(6))
    assert all(result.error is None and len(result.results or []) == 3 for result in results)


# --- a burst of clients -----------------------------------------------------------------------------

BURST_CLIENTS = 200
BURST_SECONDS = 15


def test_a_gateway_under_a_burst_of_200_clients(broker: Broker, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """200 concurrent clients on loopback: only 200s and the documented 429/503, every accepted
    request answered in full, and the gateway's memory bounded."""
    model = f"burst-{uuid.uuid4().hex[:6]}"
    running = worker(model_dirs, tmp_path / "worker.log", model, broker)
    gateway = start_gateway(tmp_path / "gateway.log", env=gateway_env(broker, model))
    try:
        rss_before = _rss_mb(gateway.process.pid)
        statuses = asyncio.run(_burst(gateway))
        rss_after = _rss_mb(gateway.process.pid)
    finally:
        stop_process(gateway.process)
        stop_worker(running)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] > BURST_CLIENTS  # work was accepted and answered, not only refused
    assert rss_after - rss_before < 300, (rss_before, rss_after)


async def _burst(gateway: GatewayProcess) -> dict[int, int]:
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + BURST_SECONDS
    limits = httpx.Limits(max_connections=BURST_CLIENTS, max_keepalive_connections=BURST_CLIENTS)
    async with httpx.AsyncClient(base_url=gateway.url, headers=AUTH, timeout=60, limits=limits) as http:

        async def one_client(i: int) -> None:
            n = 0
            while time.monotonic() < deadline:
                documents = [f"burst {i}-{n} document {j}" for j in range(4)]
                response = await http.post("/v1/rerank", json={"query": f"burst {i}", "documents": documents})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    assert len(response.json()["results"]) == 4  # answered in full
                n += 1

        await asyncio.gather(*(one_client(i) for i in range(BURST_CLIENTS)))
    return statuses


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


BROKER_FIELDS = {"pairs_per_s", "e2e_ms_p50", "e2e_ms_p99", "recovery_s"}


# --- the benchmark of both (here, not in test_bench_smoke.py: it needs RabbitMQ up) -------------------


@pytest.mark.bench
@pytest.mark.timeout(600)  # two brokers, two workers each, and the Redis sweep's ~15 s after a kill
def test_bench_brokers_on_redis_and_rabbitmq(tmp_path: Path) -> None:
    """`rerankq bench brokers` (needs the local RabbitMQ) at tiny sizes: a record for each broker
    with every number positive, and one with the ratios rabbitmq / redis."""
    env = {k: v for k, v in os.environ.items() if k not in ("RERANKQ_REDIS_URL", "RERANKQ_BROKER_URL")}
    env["RERANKQ_SHAPES_DIR"] = str(tmp_path / "shapes")
    command = [sys.executable, "-m", "rerankq", "bench", "brokers", "--shape", "tiny-bert", "--jobs", "8", "--json"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=560)
    assert run.returncode == 0, run.stderr[-4000:]

    records = {json.loads(line)["broker"]: json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")}
    assert set(records) == {"redis", "rabbitmq", "rabbitmq/redis"}
    for broker in ("redis", "rabbitmq"):
        assert all(records[broker][name] > 0 for name in BROKER_FIELDS), records[broker]
    assert all(records["rabbitmq/redis"][f"{name}_ratio"] > 0 for name in BROKER_FIELDS)
