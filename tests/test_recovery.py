"""Dead-worker recovery on Redis (rerankq.worker.recovery): a slow but living worker keeps its own
jobs; two sweepers restore each message once; a sweep spares fresh heartbeats. (Killed and
frozen workers, on both brokers: test_delivery.py.)"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from rerankq import RerankClient
from rerankq.core.constants import CLAIMANTS_KEY, HEARTBEATS_KEY, claims_key, queue_name
from rerankq.core.settings import Settings
from rerankq.testing.processes import WorkerProcess, start_worker, stop_worker, wait_until_consuming
from rerankq.testing.waiting import wait_until
from rerankq.worker.recovery import UNACKED_INDEX_KEY, UNACKED_KEY, claim, restore_worker, sweep

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.delivery]


def jobs(n: int, tag: str, documents: int = 8) -> list[tuple[str, list[str]]]:
    texts = [[f"{tag} document {i}-{j} on recovery" * 4 for j in range(documents)] for i in range(n)]
    return [(f"{tag} query {i}", texts[i]) for i in range(n)]


def held_by(store: redis.Redis, worker_id: str) -> set[str]:
    """The job ids a worker holds, from its claims and the messages they name."""
    tags = cast(list[bytes], store.hkeys(claims_key(worker_id)))
    entries = cast(list[bytes | None], store.hmget(UNACKED_KEY, tags)) if tags else []
    return {json.loads(entry)[0]["headers"]["id"] for entry in entries if entry}


def worker_id_of(store: redis.Redis, pid: int) -> str:
    """A worker's id (its Celery hostname, which names its heartbeat) from its process id."""
    wait_until(lambda: any(f"-{pid}@" in key.decode() for key in store.hkeys(HEARTBEATS_KEY)), timeout=60)
    return next(key.decode() for key in store.hkeys(HEARTBEATS_KEY) if f"-{pid}@" in key.decode())


def scores(results: Any) -> list[tuple[int, float]]:
    return [(ranked.index, round(ranked.score, 5)) for ranked in results]


def test_a_slow_but_living_worker_keeps_its_jobs_while_another_sweeps(
    client: RerankClient, tmp_path: Path, workers: dict[str, WorkerProcess]
) -> None:
    """Forward passes (128 long pairs, seconds each) far longer than the presence timeout (0.3 s
    intervals: dead after 0.9 s):
    the heartbeat comes from its own thread, so the sweeping neighbour restores nothing and every
    job runs once, on the worker that took it."""
    model, env = "all-minilm-l6-v2", {"RERANKQ_PRESENCE_INTERVAL_S": "0.3", "RERANKQ_MAX_BATCH_PAIRS": "128"}
    slow = start_worker(model, tmp_path / "slow.log", "--name", "slow-minilm", "--concurrency", "4", env=env)
    wait_until_consuming(slow)
    sweeper = start_worker(model, tmp_path / "sweeper.log", "--name", "slow-neighbour", env=env)
    try:
        wait_until_consuming(sweeper)
        long_documents = [" ".join(["a long document about rerankers and queues"] * 30)] * 120
        handles = [client.submit(f"slow {i}", long_documents, model="slow-minilm", cache=False) for i in range(4)]
        assert all(len(handle.result(timeout=240).results) == 120 for handle in handles)
    finally:
        stop_worker(sweeper)
        stop_worker(slow)
    slow_log = (tmp_path / "slow.log").read_text()
    assert all(slow_log.count(f"[{handle.id}] received") == 1 for handle in handles)
    assert "dead_worker_restored" not in (tmp_path / "sweeper.log").read_text() and "late_ack" not in slow_log


@pytest.fixture
def quiet_store(redis_server: Any) -> Iterator[tuple[redis.Redis, str]]:
    """A database of the session's Redis that no worker serves, so no live worker's sweeper
    restores the test's messages before the test does (CI saw that race)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/11"
    store = redis.Redis.from_url(url)
    store.flushdb()
    yield store, url
    store.flushdb()
    store.close()


def test_two_sweepers_racing_restore_each_message_once(quiet_store: tuple[redis.Redis, str]) -> None:
    """Messages held by a worker without a heartbeat, restored by eight sweepers at once (the
    lock bypassed, so the Lua script alone must keep the count): each comes back exactly once,
    at the front of its queue, marked redelivered."""
    (store, url), queue = quiet_store, queue_name(f"race-{uuid.uuid4().hex[:6]}")
    dead = f"rerankq-race-{uuid.uuid4().hex[:6]}@nowhere"
    for i in range(50):
        tag = str(uuid.uuid4())
        message = {"headers": {"id": f"job-{i}"}, "properties": {"delivery_tag": tag, "priority": 0}}
        message["properties"]["delivery_info"] = {"exchange": "", "routing_key": queue}
        store.lpush(queue, json.dumps(message))
    while claim(store, [queue], dead) is not None:
        pass
    assert store.hlen(claims_key(dead)) == 50 and store.llen(queue) == 0
    barrier = threading.Barrier(8)

    def race() -> int:
        own = redis.Redis.from_url(url)
        barrier.wait()
        return restore_worker(own, dead)

    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(race())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 50 and store.llen(queue) == 50
    back = [json.loads(raw) for raw in store.lrange(queue, 0, -1)]
    assert sorted(m["headers"]["id"] for m in back) == sorted(f"job-{i}" for i in range(50))
    assert all(m["headers"]["redelivered"] and m["properties"]["delivery_info"]["redelivered"] for m in back)
    assert not store.exists(claims_key(dead)) and not store.sismember(CLAIMANTS_KEY, dead)
    tags = [m["properties"]["delivery_tag"] for m in back]
    assert not any(store.hexists(UNACKED_KEY, tag) or store.zscore(UNACKED_INDEX_KEY, tag) for tag in tags)
    store.delete(queue)


def test_a_sweep_spares_workers_whose_heartbeat_is_fresh(quiet_store: tuple[redis.Redis, str]) -> None:
    (store, url), queue = quiet_store, queue_name(f"alive-{uuid.uuid4().hex[:6]}")
    alive = f"rerankq-alive-{uuid.uuid4().hex[:6]}@here"
    message = {"headers": {"id": "alive-job"}, "properties": {"delivery_tag": str(uuid.uuid4()), "priority": 0}}
    message["properties"]["delivery_info"] = {"exchange": "", "routing_key": queue}
    store.lpush(queue, json.dumps(message))
    assert claim(store, [queue], alive) is not None
    store.hset(HEARTBEATS_KEY, alive, time.time())
    report = sweep(store, Settings(redis_url=url))
    assert alive not in report.dead and store.hlen(claims_key(alive)) == 1 and store.llen(queue) == 0
    store.hset(HEARTBEATS_KEY, alive, time.time() - 60)  # three intervals (15 s) and more without a beat
    report = sweep(store, Settings(redis_url=url))
    assert alive in report.dead and report.restored >= 1 and store.llen(queue) == 1
    store.delete(queue)
    store.hdel(HEARTBEATS_KEY, alive)
