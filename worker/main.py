"""Start a worker: load and warm the model, start the batcher, then let Celery consume."""

from __future__ import annotations

import logging
import os
import time

import redis

from producer.cache import ScoreCache
from producer.constants import queue_name
from producer.settings import get_settings
from worker.batcher import Batcher
from worker.loading import load_backend, model_identity, pick_device, resolve_model
from worker.runtime import Runtime, install

log = logging.getLogger("rerankq.worker")


def load_runtime(model: str, device: str = "auto", name: str | None = None, max_length: int | None = None) -> Runtime:
    """Everything a worker process holds: one model instance, one batcher, one Redis client."""
    settings = get_settings()
    manifest = resolve_model(model, name, settings)
    device = pick_device(device)
    started = time.perf_counter()
    backend = load_backend(manifest, device, max_length or settings.max_length)
    backend.warm_up()
    load_s = time.perf_counter() - started
    identity = model_identity(manifest, backend)
    cache = ScoreCache(settings)
    cache.publish_identity(manifest.name, identity)
    batcher = Batcher(backend, settings.token_budget, settings.max_batch_pairs, settings.max_wait_ms)
    batcher.start()
    log.info(
        "model %s ready: %s (%s) on %s in %.2fs, max_length %d",
        manifest.name,
        manifest.source,
        backend.kind,
        device,
        load_s,
        backend.max_length,
    )
    return Runtime(manifest, backend, batcher, settings, redis.Redis.from_url(settings.redis_url), cache, identity)


def run_worker(
    model: str, device: str = "auto", concurrency: int = 8, name: str | None = None, max_length: int | None = None
) -> None:
    """Serve one model until stopped. Jobs are reserved by a thread pool so their pairs can share batches."""
    runtime = load_runtime(model, device, name, max_length)
    install(runtime)
    # Celery's own success line carries the return value (document text when asked for);
    # rerankq logs its own line per job instead.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    from worker.app import app  # imported after install so tasks always find the model

    queue = queue_name(runtime.model_name)
    log.info("consuming %s with %d job threads", queue, concurrency)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--queues={queue}",
            f"--hostname=rerankq-{runtime.model_name}-{os.getpid()}@%h",
            "--task-events",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
        ]
    )
    runtime.batcher.stop()
