"""The worker's kombu transport (rerankq.worker.safe_transport) with a real redis-server and
kombu's own poller: closing a channel whose poll Redis never answered does not kill the worker,
what an earlier channel could not give back is given back by the next one, and lanes are taken
most urgent first."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Queue
from kombu.message import Message

from rerankq.core.constants import claims_key, lane_of, queue_name
from rerankq.testing.local_redis import RedisProcess
from rerankq.worker import safe_transport
from rerankq.worker.recovery import claim

pytestmark = [pytest.mark.fault, pytest.mark.delivery]


@pytest.fixture
def claimant(monkeypatch: pytest.MonkeyPatch) -> str:
    worker_id = f"rerankq-transport-{uuid.uuid4().hex[:6]}@here"
    monkeypatch.setattr(safe_transport, "claimant", worker_id)
    return worker_id


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path)
    process.start()
    yield process
    process.stop()


def message(queue: str, job_id: str) -> str:
    properties = {"delivery_tag": str(uuid.uuid4()), "priority": 0, "body_encoding": "base64"}
    properties["delivery_info"] = {"exchange": "", "routing_key": queue}
    envelope = {"body": "e30=", "content-type": "application/json", "content-encoding": "utf-8"}
    return json.dumps({**envelope, "headers": {"id": job_id}, "properties": properties})


def connect(url: str) -> Connection:
    return Connection(url, transport=safe_transport.transport_for(url))


def test_a_channel_closed_after_its_transport_is_gone_leaves_the_worker_alive(
    server: RedisProcess, claimant: str
) -> None:
    """What CI saw when Redis went away: Celery collect()s the lost connection (which drops the
    transport's client), then close()s it; the channel's close wants to restore the message it
    holds and kombu died of an AttributeError there, which Celery calls unrecoverable (the
    worker exited). The message stays held under the worker's name instead, for its next channel."""
    connection, queue = connect(server.url), queue_name(f"gone-{uuid.uuid4().hex[:6]}")
    store = redis.Redis.from_url(server.url)
    store.lpush(queue, message(queue, "held"))
    held = connection.SimpleQueue(queue).get(timeout=10)  # taken, not acknowledged
    channel = connection.default_channel
    channel.connection.client = None  # the state collect() leaves behind (_do_close_transport)
    channel.close()  # raised AttributeError before the fix
    assert channel.closed and not held.acknowledged
    assert store.hlen(claims_key(claimant)) == 1 and store.llen(queue) == 0  # held, not lost


def test_a_new_channel_gives_back_what_the_old_one_held(server: RedisProcess, claimant: str) -> None:
    """Messages claimed under this worker's name by a channel that is gone (it could not restore
    them: Redis was down when it closed, or its transport was gone) go back to their queue when the next channel first
    polls, marked redelivered; the poll then takes one of them as usual."""
    store, queue = redis.Redis.from_url(server.url), queue_name(f"orphan-{uuid.uuid4().hex[:6]}")
    for i in range(3):
        store.lpush(queue, message(queue, f"job-{i}"))
    while claim(store, [queue], claimant) is not None:  # an earlier channel's claims
        pass
    assert store.llen(queue) == 0 and store.hlen(claims_key(claimant)) == 3
    connection = connect(server.url)
    taken = connection.SimpleQueue(queue).get(timeout=10)
    assert taken.headers["redelivered"] and taken.headers["id"] in {"job-0", "job-1", "job-2"}
    assert store.llen(queue) == 2 and store.hlen(claims_key(claimant)) == 1  # the other two are back
    left = [json.loads(raw)["headers"] for raw in store.lrange(queue, 0, -1)]
    assert all(headers["redelivered"] for headers in left)
    connection.close()


def test_a_job_finishing_after_its_channel_closed_leaves_the_worker_alive(server: RedisProcess, claimant: str) -> None:
    """What CI saw after a Sentinel failover: a job finished on a thread after Celery had closed
    the lost connection's channel; its ack reached a channel with no connection, kombu raised
    AttributeError, which Celery calls unrecoverable, and the worker exited. The ack is deferred
    instead: the message stays held under the worker's name, for its next channel to give back
    (a second run of a finished job at worst, never a lost one or a dead worker)."""
    connection, queue = connect(server.url), queue_name(f"late-{uuid.uuid4().hex[:6]}")
    store = redis.Redis.from_url(server.url)
    store.lpush(queue, message(queue, "finishing"))
    held = connection.SimpleQueue(queue).get(timeout=10)
    channel = connection.default_channel
    channel.connection.client = None  # the state collect() leaves behind (_do_close_transport)
    channel.close()
    held.ack()  # raised AttributeError before the fix
    assert store.hlen(claims_key(claimant)) == 1 and store.llen(queue) == 0  # held, not lost


def test_lanes_are_taken_in_rerankq_order_whatever_order_they_were_consumed_in(
    server: RedisProcess, claimant: str
) -> None:
    """Interactive first, then cpu, then bulk, by rerankq's own order: kombu before 5.7 kept a
    channel's queues in a set, so its order was chance (a new one in each process)."""
    store, model = redis.Redis.from_url(server.url), f"order-{uuid.uuid4().hex[:6]}"
    queues = [queue_name(model, lane) for lane in ("bulk", "cpu", "interactive")]  # least urgent first
    for queue in queues:
        for i in range(2):
            store.lpush(queue, message(queue, f"{queue}#{i}"))
    taken: list[str] = []

    def take(body: object, received: Message) -> None:
        taken.append(lane_of(received.headers["id"].split("#")[0]))
        received.ack()

    with connect(server.url) as connection, connection.Consumer([Queue(q) for q in queues], callbacks=[take]):
        while len(taken) < 6:
            connection.drain_events(timeout=10)
    assert taken == ["interactive"] * 2 + ["cpu"] * 2 + ["bulk"] * 2
