"""The Celery app both sides build from the same settings, so producers and workers always agree."""

from __future__ import annotations

from typing import Any

from celery import Celery

from rerankq.core.broker import celery_broker_options
from rerankq.core.redis_clients import is_sentinel
from rerankq.core.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery/kombu configuration. JSON only; late acks so a crashed worker's jobs are redelivered."""
    # kombu's Redis transport and Celery's Redis backend each read the visibility timeout from a
    # different place; set it in all of them (celery/celery#7651).
    # "priority": a worker's BRPOP lists its queues in the order it consumes them (most urgent
    # lane first) instead of kombu's default round robin, so bulk waits while interactive has work.
    transport_options: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout_s,
        "queue_order_strategy": "priority",
    }
    if is_sentinel(settings.redis_url):  # kombu and Celery's backend find the primary through sentinels
        transport_options["master_name"] = settings.redis_sentinel_master
    return {
        "broker_url": settings.effective_broker_url,
        "result_backend": settings.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.job_time_limit_s,
        "visibility_timeout": settings.visibility_timeout_s,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": transport_options,
        "result_expires": settings.result_ttl_s,
        "task_track_started": True,
        "worker_send_task_events": True,
        # No task-sent events: they would double every producer's publishes; Flower sees a job
        # from the moment a worker receives it, and queue depth shows what waits before that.
        "task_send_sent_event": False,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    } | celery_broker_options(settings)


def make_celery(settings: Settings, main: str = "rerankq", events: str | None = None) -> Celery:
    """``events``: Celery's events class (``module:Class``), Celery's own when None."""
    app = Celery(main, events=events)
    app.conf.update(celery_config(settings))
    return app
