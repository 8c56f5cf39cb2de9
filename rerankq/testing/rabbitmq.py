"""A RabbitMQ virtual host of its own for a test or a benchmark run, on the local broker
(``RERANKQ_TEST_RABBITMQ``, default ``amqp://guest:guest@127.0.0.1:5672``; started by
ops/scripts/ensure-rabbitmq.sh), made and deleted with ``rabbitmqctl``: queues, messages and
connections of one run never meet another's, and nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"


def rabbitmq_base_url() -> str:
    return os.environ.get("RERANKQ_TEST_RABBITMQ", LOCAL_RABBITMQ).rstrip("/")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def rabbitmq_vhost(prefix: str = "rerankq-test") -> Iterator[str]:
    """The URL of a fresh virtual host the base URL's user may use; deleted (with everything in
    it, connections closed) on the way out."""
    base = rabbitmq_base_url()
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    user = urlsplit(base).username or "guest"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"{base}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def stop_rabbitmq() -> None:
    """Stop the broker application (the Erlang node stays up): every connection drops."""
    rabbitmqctl("stop_app")


def start_rabbitmq() -> None:
    """Start it again; durable queues and persistent messages come back."""
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
