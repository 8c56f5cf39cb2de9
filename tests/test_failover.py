"""A Sentinel-managed failover of the broker Redis with jobs in flight, with real redis-server and
redis-sentinel processes: the primary is killed, the sentinel promotes the replica, and the SDK,
a worker and the gateway reconnect to the new primary on their own. Every job whose submit
returned either finishes or fails with a clear reason; no worker is left hung."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from rerankq import BrokerUnavailable, JobFailed, JobNotFound, JobTimeout, RerankClient
from rerankq.core.settings import get_settings
from rerankq.testing.local_redis import RedisProcess, free_port, wait_for_redis
from rerankq.testing.processes import start_gateway, start_worker, stop_process, stop_worker, wait_until_consuming
from rerankq.testing.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.delivery]
MASTER = "rerankq-failover"


class SentinelSet:
    """A primary (append-only, fsync every second), a replica and one sentinel (quorum 1)."""

    def __init__(self, folder: Path) -> None:
        for name in ("primary", "replica"):
            (folder / name).mkdir()
        self.primary = RedisProcess(folder / "primary", appendonly=True)
        self.primary.start()
        replica_of = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica = RedisProcess(folder / "replica", appendonly=True, extra=replica_of)
        self.replica.start()
        self.port = free_port()
        conf = folder / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 5000\n"
        )
        self.sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
        wait_for_redis(f"redis://127.0.0.1:{self.port}")
        wait_until(lambda: self._replicas_known(), timeout=30)

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.port}/0"

    def primary_port(self) -> int:
        info = redis.Redis(port=self.port).execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
        return int(info[1])

    def _replicas_known(self) -> bool:
        replicas = redis.Redis(port=self.port).execute_command("SENTINEL", "replicas", MASTER)
        return bool(replicas)

    def stop(self) -> None:
        self.sentinel.terminate()
        self.sentinel.wait(10)
        self.primary.stop()
        self.replica.stop()


def outcome(handle: Any, deadline: float) -> str:
    """How a job acknowledged as submitted ended: its result, or a failure naming its reason. A
    caller that hears BrokerUnavailable asks again (the job may still finish), as the SDK says."""
    while True:
        try:
            handle.result(timeout=max(0.1, deadline - time.monotonic()))
            return "finished"
        except BrokerUnavailable as e:
            if time.monotonic() > deadline:
                return f"BrokerUnavailable: {e}"
        except (JobFailed, JobTimeout, JobNotFound) as e:
            return f"{type(e).__name__}: {e}"


def test_a_sentinel_failover_with_jobs_in_flight(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    redis_set = SentinelSet(tmp_path)
    env = {"RERANKQ_REDIS_URL": redis_set.url, "RERANKQ_REDIS_SENTINEL_MASTER": MASTER}
    settings = get_settings().updated(redis_url=redis_set.url, redis_sentinel_master=MASTER)
    worker = start_worker(str(model_dirs["tiny-bert"]), tmp_path / "worker.log", "--name", "ha", env=env)
    gateway = None
    try:
        wait_until_consuming(worker)
        gateway = start_gateway(tmp_path / "gateway.log", env=env | {"RERANKQ_DEFAULT_MODEL": "ha"})
        with RerankClient(settings=settings) as client:
            submitted, refused = submit_through_a_failover(client, redis_set)
            wait_until(lambda: redis_set.primary_port() == redis_set.replica.port, timeout=60)  # promoted
            deadline = time.monotonic() + 10  # for all of them together: a lost job costs it once
            outcomes = Counter(outcome(handle, deadline).split(":")[0] for handle in submitted)
            # after the failover, everything works again without a restart
            after = client.submit("after the failover", ["a", "b"], model="ha", cache=False)
            assert len(after.result(timeout=60).results) == 2  # the worker serves on the new primary
            wait_until(lambda: gateway_answers(gateway.url), timeout=60)  # its presence is back
        # only writes the replica had not copied when the primary died are lost, and they fail clearly
        assert outcomes["finished"] >= 0.9 * len(submitted), outcomes
        assert set(outcomes) <= {"finished", "JobTimeout", "JobNotFound"}, outcomes
        print(f"\nfailover: {len(submitted)} jobs submitted ({refused} refused while no primary): {dict(outcomes)}")
    finally:
        if gateway is not None:
            stop_process(gateway.process)
        stop_worker(worker)
        redis_set.stop()


def gateway_answers(url: str) -> bool:
    answer = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=60)
    assert answer.status_code in (200, 503), answer.text  # 503: no worker announced on the new primary yet
    return answer.status_code == 200


def submit_through_a_failover(client: RerankClient, redis_set: SentinelSet) -> tuple[list[Any], int]:
    """Submit jobs steadily; a quarter of the way, kill the primary. Submits refused while there
    is no primary raise BrokerUnavailable (nothing was enqueued) and are counted, not kept."""
    submitted, refused, stop = [], 0, threading.Event()
    killer = threading.Timer(1.0, lambda: (redis_set.primary.kill(), stop.set()))
    killer.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not stop.is_set() or refused < 5):  # on until refused a while
        try:
            submitted.append(client.submit(f"failover {len(submitted)}", ["a", "b", "c"], model="ha", cache=False))
        except BrokerUnavailable:
            refused += 1
            time.sleep(0.2)
    killer.join()
    return submitted, refused
