"""Redis-only fault drills with real processes: foreign messages on a queue, the visibility
timeout as the last resort, an idle connection, a password, TLS and Sentinel. The drills every
broker must pass (kill -9, SIGSTOP, a broker restart, a poison job, a burst of clients) are
test_delivery.py's, run on Redis and on RabbitMQ."""

from __future__ import annotations

import base64
import http.client
import json
import pickle
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from rerankq import BrokerUnavailable, RerankClient
from rerankq.core.constants import CLAIMS_KEY_PREFIX, REJECTED_KEY, model_identity_key, queue_name
from rerankq.core.settings import get_settings
from rerankq.testing.local_redis import RedisProcess, free_port
from rerankq.testing.processes import (
    GatewayProcess,
    WorkerProcess,
    start_worker,
    stop_worker,
    wait_until_consuming,
)
from rerankq.testing.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.slow]


def kombu_message(body: bytes, queue: str, content_type: str = "application/json", task: str = "rerankq.rerank") -> str:
    """A Celery task message as kombu's Redis transport stores it."""
    task_id = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "argsrepr": "?"},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


FOREIGN = {
    "unreadable": lambda queue: b"\xff\xfe not even JSON",
    "not a kombu message": lambda queue: json.dumps({"hello": "world"}),
    "pickle": lambda queue: kombu_message(pickle.dumps(([], {}, {})), queue, "application/x-python-serialize"),
    "unknown task": lambda queue: kombu_message(json.dumps([[], {}, {}]).encode(), queue, task="os.system"),
    "invalid job": lambda queue: kombu_message(json.dumps([["not a job"], {}, {}]).encode(), queue),
}


@pytest.mark.delivery
def test_foreign_messages_are_rejected_and_recorded_and_the_worker_keeps_serving(
    workers: dict[str, WorkerProcess], client: RerankClient, redis_server: object
) -> None:
    broker = client.app.backend.client
    broker.delete(REJECTED_KEY)
    queue = queue_name("tiny-bert")
    for make in FOREIGN.values():
        broker.lpush(queue, make(queue))
    assert client.rank("after the garbage", ["still", "serving"], model="tiny-bert", cache=False, timeout=30)
    wait_until(lambda: broker.llen(REJECTED_KEY) >= len(FOREIGN), why=lambda: str(broker.lrange(REJECTED_KEY, 0, -1)))
    entries = [json.loads(raw) for raw in broker.lrange(REJECTED_KEY, 0, -1)]
    reasons = " | ".join(f"{entry['kind']}: {entry['reason']}" for entry in entries)
    assert "unreadable: not a kombu JSON message (JSONDecodeError" in reasons
    assert "unreadable: not a kombu JSON message (KeyError" in reasons
    assert "Refusing to deserialize untrusted content of type pickle" in reasons  # never unpickled
    assert "unknown_task: no task named 'os.system'" in reasons
    assert "invalid_job: invalid job: Input should be a valid dictionary" in reasons
    assert workers["tiny-bert"].process.poll() is None


# --- a worker killed mid-batch ------------------------------------------------------------------


@pytest.mark.delivery
def test_the_visibility_timeout_still_brings_back_what_no_sweeper_gave_back(
    client: RerankClient, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The last resort, kept: with sweeps too slow to matter (presence every 60 s), the jobs a
    killed worker held come back through kombu's visibility timeout (8 s here), and the next
    worker finishes exactly those, with the scores an undisturbed run gives. (The seconds-fast
    path, sweeps, is test_recovery.py's.)"""
    model = f"kill-{uuid.uuid4().hex[:6]}"
    env = {"RERANKQ_VISIBILITY_TIMEOUT_S": "8", "RERANKQ_JOB_TIME_LIMIT_S": "7", "RERANKQ_MAX_BATCH_PAIRS": "2"}
    env["RERANKQ_PRESENCE_INTERVAL_S"] = "60"
    jobs = [(f"kill query {i}", [f"document {i}-{j} about late acks" * 3 for j in range(12)]) for i in range(12)]
    first = start_worker(str(model_dirs["tiny-bert"]), tmp_path / "first.log", "--name", model, env=env)
    wait_until_consuming(first)
    handles = [client.submit(query, documents, model=model, cache=False) for query, documents in jobs]
    store = redis.Redis.from_url(client.settings.redis_url)
    held = f"{CLAIMS_KEY_PREFIX}rerankq-{model}-{first.process.pid}@*"
    wait_until(lambda: any(store.hlen(key) >= 2 for key in store.scan_iter(match=held)), timeout=60)
    first.process.kill()
    first.process.wait()
    tags = [tag for key in store.scan_iter(match=held) for tag in store.hkeys(key)]
    stranded = {json.loads(entry)[0]["headers"]["id"] for entry in store.hmget("unacked", tags) if entry}
    # kombu restores what a consumer held longer than the visibility timeout when a consumer
    # starts (then only every ~100 s): start the next one once that is true of every stranded job
    held_since = max(float(store.zscore("unacked_index", tag) or 0) for tag in tags)
    wait_until(lambda: time.time() - held_since > float(env["RERANKQ_VISIBILITY_TIMEOUT_S"]), timeout=30)
    second = start_worker(str(model_dirs["tiny-bert"]), tmp_path / "second.log", "--name", model, env=env)
    try:
        wait_until_consuming(second)
        results = {handle.id: handle.result(timeout=90) for handle in handles}
        expected = [client.rank(query, documents, model=model, cache=False) for query, documents in jobs]
    finally:
        stop_worker(second)
    for handle, reference in zip(handles, expected, strict=True):
        assert [(d.index, d.score) for d in results[handle.id].results] == [
            (d.index, pytest.approx(d.score, abs=1e-5)) for d in reference
        ]
    assert len(stranded) >= 2  # the redelivery is proven: each stranded job ran on the second worker
    for job_id in stranded:
        assert all(f":{second.process.pid}:" in batch for batch in results[job_id].stats.batches)


def test_an_idle_connection_outlives_a_clients_keep_alive(gateway: GatewayProcess) -> None:
    """Clients keep idle connections for a while (httpx 5 s) and reuse them; a gateway that closes
    one at the same moment resets the request sent on it. The gateway keeps idle connections
    longer (RERANKQ_GATEWAY_KEEP_ALIVE_S, 65 s), so a connection idle for 6 s carries the next one."""
    url = httpx.URL(gateway.url)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=10)
    try:
        for pause in (0, 6):
            time.sleep(pause)
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
    finally:
        connection.close()


# --- security -----------------------------------------------------------------------------------


@pytest.mark.security
@pytest.mark.delivery
def test_a_password_protected_redis_and_no_secret_or_document_text_in_logs(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """redis://:password@host works for workers and the SDK; a client without it is refused; the
    password and the documents' text appear in no log line at INFO."""
    password, secret_text = "s3cret-Pa55", f"confidential passage {uuid.uuid4().hex}"
    (tmp_path / "redis").mkdir()
    server = RedisProcess(tmp_path / "redis", extra=["--requirepass", password])
    url = server.url.replace("redis://", f"redis://:{password}@")
    server.start(url)
    worker = start_worker(
        str(model_dirs["tiny-bert"]), tmp_path / "worker.log", "--name", "locked", env={"RERANKQ_REDIS_URL": url}
    )
    try:
        wait_until_consuming(worker)
        with RerankClient(url) as client:
            assert client.rank("who may read this", [secret_text, "public"], model="locked", cache=False)
        with RerankClient(server.url) as stranger, pytest.raises(BrokerUnavailable):
            stranger.submit("no password", ["doc"], model="locked")
    finally:
        stop_worker(worker)
        server.stop()
    log = (tmp_path / "worker.log").read_text()
    assert '"event": "job_done"' in log
    assert password not in log and secret_text not in log


def _certificates(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=rerankq-test-ca")  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"
    )
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return folder


@pytest.mark.security
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
@pytest.mark.delivery
def test_tls_redis(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """rediss:// with a verified certificate carries the worker's and the SDK's traffic; a client
    that cannot verify the server is refused."""
    (tmp_path / "redis").mkdir()
    server = RedisProcess(tmp_path / "redis", tls=_certificates(tmp_path / "tls"))
    server.start()
    worker = start_worker(
        str(model_dirs["tiny-bert"]),
        tmp_path / "worker.log",
        "--name",
        "tls-model",
        env={"RERANKQ_REDIS_URL": server.url},
    )
    try:
        wait_until_consuming(worker)
        with RerankClient(server.url) as client:
            assert len(client.rank("over TLS", ["a", "b"], model="tls-model", cache=False, timeout=30)) == 2
        unverified = server.url.split("?", 1)[0] + "?ssl_cert_reqs=required"  # no CA: cannot verify
        with RerankClient(unverified) as stranger, pytest.raises(BrokerUnavailable):
            stranger.submit("unverified", ["doc"], model="tls-model")
    finally:
        stop_worker(worker)
        server.stop()


@pytest.mark.security
@pytest.mark.delivery
def test_redis_through_sentinel(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """sentinel:// URLs (kombu's form) for broker, results and rerankq's own clients: the worker
    and the SDK find the primary through a sentinel."""
    (tmp_path / "primary").mkdir()
    primary = RedisProcess(tmp_path / "primary")
    primary.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor rerankq-primary 127.0.0.1 {primary.port} 1\n"
    )
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    url = f"sentinel://127.0.0.1:{port}/0"
    env = {"RERANKQ_REDIS_URL": url, "RERANKQ_REDIS_SENTINEL_MASTER": "rerankq-primary"}
    worker = start_worker(str(model_dirs["tiny-bert"]), tmp_path / "worker.log", "--name", "ha-model", env=env)
    try:
        wait_until_consuming(worker)
        settings = get_settings().model_copy(update={"redis_url": url, "redis_sentinel_master": "rerankq-primary"})
        with RerankClient(settings=settings) as client:
            result = client.submit("through a sentinel", ["a", "b"], model="ha-model", cache=True).result(timeout=30)
        assert len(result.results) == 2
        assert redis.Redis.from_url(primary.url).exists(model_identity_key("ha-model"))  # the primary holds it
    finally:
        stop_worker(worker)
        sentinel.terminate()
        sentinel.wait(10)
        primary.stop()
