"""The worker-side Celery app: the producer's configuration plus the rerank task, built by a
factory (nothing at import time) from the settings the worker runs with."""

from __future__ import annotations

from celery import Celery

from rerankq.core.broker import lane_queue
from rerankq.core.celery_app import make_celery
from rerankq.core.constants import LANES, queue_name
from rerankq.core.settings import Settings
from rerankq.worker import task_events
from rerankq.worker.results import backend_url
from rerankq.worker.safe_transport import transport_for
from rerankq.worker.tasks import register


def create_worker_app(settings: Settings, model: str) -> Celery:
    # task events go out from the event loop only (rerankq.worker.task_events)
    app = make_celery(settings, main="rerankq-worker", events=task_events.EVENTS)
    if settings.on_rabbitmq:
        # every lane of its model, declared as producers declare them (a job moved to the cpu
        # lane is sent by name); the worker consumes those --queues names
        app.conf.task_queues = [lane_queue(queue_name(model, lane), settings) for lane in LANES]
    else:
        # survive and record messages that are not jobs (see rerankq.worker.safe_transport)
        app.conf.broker_transport = transport_for(settings.redis_url)
    app.conf.worker_consumer = "rerankq.worker.rejections:RejectingConsumer"
    # a late copy of a job (its worker froze and was given up on) never overwrites the answer
    app.conf.result_backend = backend_url(settings.redis_url)
    register(app)
    return app
