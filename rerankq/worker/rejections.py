"""Messages on rerankq queues that are not rerank jobs: recorded with the reason, then dropped.

A queue accepts messages from anyone with access to Redis. Whatever arrives that rerankq cannot
run is acknowledged (so it never loops), and recorded three ways: the capped Redis list
``rerankq:rejected`` (newest first: time, worker, kind, reason), the Prometheus counter
``rerankq_messages_rejected_total{kind}``, and an ERROR log line. The worker keeps serving.

Kinds: ``unreadable`` (not JSON, or not a kombu message: rerankq.worker.safe_transport), ``disallowed``
(a serializer other than JSON, e.g. pickle, which is never deserialized), ``unknown_task`` (a
task name rerankq does not have), ``invalid_task`` / ``unknown_message`` (Celery's own refusals),
``invalid_job`` (a rerank task whose job does not validate; it also fails under its id),
``incompatible_format`` (a job of a format major this worker cannot read, sent by a newer
producer: it fails under its id with both versions and the upgrade order).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

import redis
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from rerankq.core.constants import REJECTED_KEY
from rerankq.worker import metrics

log = logging.getLogger("rerankq.rejected")
KEEP = 1000  # entries kept in rerankq:rejected
_redis: redis.Redis | None = None


def use_redis(client: redis.Redis) -> None:
    """Where rejections are recorded (the worker's broker connection pool)."""
    global _redis
    _redis = client


def record_rejection(kind: str, reason: str) -> None:
    entry = {"at": time.time(), "worker": f"{socket.gethostname()}:{os.getpid()}", "kind": kind, "reason": reason[:500]}
    log.error(json.dumps({"event": "message_rejected", **entry}))
    metrics.REJECTED.labels(kind).inc()
    if _redis is None:
        return
    try:
        pipe = _redis.pipeline(transaction=False)
        pipe.lpush(REJECTED_KEY, json.dumps(entry))
        pipe.ltrim(REJECTED_KEY, 0, KEEP - 1)
        pipe.execute()
    except redis.RedisError as e:  # the log line and the counter still hold it
        log.warning("could not record the rejection in Redis: %s", e)


class RejectingConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, recording each message it refuses (Celery only logs them)."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        kind = "disallowed" if isinstance(exc, ContentDisallowed) else "unreadable"
        record_rejection(kind, f"{type(exc).__name__}: {exc} (content type {message.content_type!r})")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        record_rejection("unknown_message", "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_rejection("unknown_task", f"no task named {message.headers.get('task')!r}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_rejection("invalid_task", f"{type(exc).__name__}: {exc}")
        super().on_invalid_task(body, message, exc)
