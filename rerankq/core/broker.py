"""Which broker jobs travel on, and its lane queues: declared alike by every producer and worker,
and counted for admission, ``rerankq status``, the exporter and the lane gate.

Redis (the default): kombu's Redis transport keeps a queue as lists (one per priority step);
rerankq's worker transport (rerankq.worker.safe_transport) holds every message under its
worker's name and gives a dead worker's back (rerankq.worker.recovery).

RabbitMQ (``RERANKQ_BROKER_URL=amqp://...``): delivery rests on the broker's own guarantees, and
none of that machinery runs. Lane queues are durable (quorum by default: replicated, with the
broker's redelivery cap ``x-delivery-limit``), messages persistent (Celery's default), sends
confirmed by the broker (a send returns once the broker holds the job), acks late: when a
worker's connection drops (killed, or silent past the heartbeat) the broker gives its unacked
jobs to others at once, and never while that connection lives. Results, presence, aliases, the
ledger and the score cache stay in Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from amqp.exceptions import AMQPError, NotFound
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError

from rerankq.core.redis_clients import masked_url
from rerankq.core.settings import Settings
from rerankq.errors import BrokerUnavailable


def lane_queue(name: str, settings: Settings) -> str | Queue:
    """The queue ``name`` as this broker declares it. On RabbitMQ every producer and worker must
    declare a queue with the same arguments (the broker refuses a second declaration that
    differs), so they all take it from here; on Redis the name is all kombu needs."""
    if not settings.on_rabbitmq:
        return name
    arguments: dict[str, Any] = {"x-queue-type": settings.broker_queue_type}
    if settings.broker_queue_type == "quorum":
        # the broker's own poison cap: a message returned this many times is dropped. rerankq's
        # count (rerankq.worker.tasks.count_redelivery) fails such a job with its reason one
        # delivery earlier; this stops one that kills its worker before the count is read.
        arguments["x-delivery-limit"] = settings.max_deliveries
    # Celery's exchange-per-queue convention (as for queues it creates itself), durable
    return Queue(name, Exchange(name, "direct", durable=True), name, durable=True, queue_arguments=arguments)


def celery_broker_options(settings: Settings) -> dict[str, Any]:
    """The Celery settings that differ on RabbitMQ (empty on Redis)."""
    if not settings.on_rabbitmq:
        return {}
    return {
        "broker_heartbeat": settings.broker_heartbeat_s,
        # publisher confirms: a send returns once the broker has the job (admission counts on it)
        "broker_transport_options": {"confirm_publish": True},
        "task_default_queue_type": settings.broker_queue_type,
        "task_create_missing_queue_type": settings.broker_queue_type,
    }


class RabbitDepths:
    """Jobs waiting (ready, not yet delivered) in RabbitMQ queues, read with a passive declare:
    plain AMQP, so no management plugin is needed. A queue not declared yet holds nothing.
    Thread-safe: one connection, one caller at a time."""

    def __init__(self, settings: Settings) -> None:
        # socket timeouts: a broker that stops answering is an error here, never a wait without end
        timeouts = {"read_timeout": 5, "write_timeout": 5}
        self._connection = Connection(
            settings.effective_broker_url, connect_timeout=2, heartbeat=0, transport_options=timeouts
        )
        self._lock = threading.Lock()
        self._channel: Any = None

    def waiting(self, queues: Sequence[str]) -> list[int]:
        """Raises ``BrokerUnavailable`` when RabbitMQ cannot be asked."""
        with self._lock:
            try:
                self._connection.ensure_connection(max_retries=1)
                return [self._waiting(queue) for queue in queues]
            except (OSError, AMQPError, OperationalError) as e:
                self._channel = None
                self._connection.collect()  # the next call connects afresh
                url = masked_url(self._connection.as_uri(include_password=True))
                raise BrokerUnavailable("reading queue depths", str(e) or type(e).__name__, url, False) from e

    def _waiting(self, queue: str) -> int:
        # one channel for every read (the gateway reads on each request); a new one only after
        # the broker closed it
        if self._channel is None:
            self._channel = self._connection.channel()
        try:
            return int(self._channel.queue_declare(queue=queue, passive=True).message_count)
        except NotFound:  # the broker closed the channel; nobody declared the queue yet
            self._channel = None
            return 0

    def close(self) -> None:
        self._channel = None
        self._connection.release()
