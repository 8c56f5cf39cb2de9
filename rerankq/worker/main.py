"""Start a worker: load and warm the model, start the batcher, then let Celery consume."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from celery import Celery, Task, signals
from celery.exceptions import SecurityWarning

from rerankq.core.broker import RabbitDepths
from rerankq.core.constants import Lane, by_priority, queue_name, worker_id
from rerankq.core.contract import revision_of
from rerankq.core.redis_clients import connect
from rerankq.core.registry import ModelKind, ModelManifest
from rerankq.core.settings import Settings
from rerankq.core.tracing_setup import start_tracing
from rerankq.producer.score_cache import ScoreCache
from rerankq.worker import metrics, safe_transport
from rerankq.worker.app import create_worker_app
from rerankq.worker.backends import Backend, OomInjectingBackend
from rerankq.worker.batcher import Batcher
from rerankq.worker.golden import load_golden
from rerankq.worker.heartbeat import PresenceBeacon, presence_step
from rerankq.worker.lane_gate import LaneGate, lane_gate_step
from rerankq.worker.loading import load_checked, model_identity, pick_device, resolve_model
from rerankq.worker.loop_acks import loop_acks_step
from rerankq.worker.private_hooks import require_supported_libraries
from rerankq.worker.recovery import Sweeper
from rerankq.worker.redis_wait import wait_for_redis
from rerankq.worker.rejections import use_redis
from rerankq.worker.runtime import Runtime, install
from rerankq.worker.tasks import served_lane

log = logging.getLogger("rerankq.worker")


@dataclass(frozen=True)
class WorkerOptions:
    """What `rerankq worker` serves and how it starts. Everything tunable lives in ``Settings``
    (the CLI's flags build a copy of it); these are the choices settings do not hold."""

    model: str
    kind: ModelKind | None = None  # --kind: what a folder or bare hub id holds (a manifest says it itself)
    device: str = "auto"
    concurrency: int = 32
    name: str | None = None
    lanes: tuple[Lane, ...] | None = None  # None: interactive and bulk (+ cpu on a CPU worker)
    min_free_gpu_mb: int = 0
    fallback_to_cpu: bool = False
    languages: tuple[str, ...] = ()  # golden-set languages the model must rank (default: the manifest's)
    golden: Path | None = None  # a golden set of one's own (default: the shipped one)


def load_runtime(options: WorkerOptions, settings: Settings) -> Runtime:
    """Everything a worker process holds: one model instance, one batcher, one Redis client."""
    manifest = resolve_model(options.model, options.name, settings, options.kind)
    if options.languages:
        manifest = manifest.model_copy(update={"languages": list(options.languages)})
    device = pick_device(options.device, options.min_free_gpu_mb, options.fallback_to_cpu)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if settings.gpu_memory_fraction and device.startswith("cuda"):
        torch.cuda.set_per_process_memory_fraction(settings.gpu_memory_fraction, torch.device(device))
    started = time.perf_counter()
    backend = load_checked(
        manifest,
        device,
        max_length=settings.max_length,
        golden=load_golden(options.golden) if options.golden else None,
        check_ranking=settings.check_ranking,
        served_by=settings.backend,
        settings=settings,
        report=lambda passed: log.info("model check %s passed: %s", passed.check, passed.detail),
    )
    backend = with_fault_injection(backend, settings)
    backend.warm_up()
    load_s = time.perf_counter() - started
    metrics.MODEL_LOAD.labels(manifest.name, device, backend.served_by).set(load_s)
    identity = model_identity(manifest, backend, settings.query_share)
    batcher = Batcher(
        backend,
        token_budget_for(manifest, device, settings),
        settings.batch_pairs_for(device),
        settings.max_wait_ms,
        settings.max_consecutive_ooms,
        cross_job=settings.cross_job_batching,
        busy_token_budget=settings.bulk_busy_token_budget,
        observer=metrics.BatchMetrics(manifest.name, device, backend.served_by),
    )
    batcher.start()
    if prefixes := getattr(backend, "prefixes", None):
        log.info("shared prompt prefixes reused, up to %d tokens kept", prefixes.max_tokens)
    log.info(
        "model %s loaded: %s@%s (%s) on %s with %s in %.2fs, max_length %d, %d threads, cross-job batching %s",
        manifest.name,
        manifest.source,
        revision_of(identity),
        backend.kind,
        device,
        backend.served_by,
        load_s,
        backend.max_length,
        torch.get_num_threads(),
        "on" if settings.cross_job_batching else "off",
    )
    lanes = by_priority(
        options.lanes or (("interactive", "bulk", "cpu") if device == "cpu" else ("interactive", "bulk"))
    )
    redis_client = connect(settings.redis_url, settings.redis_sentinel_master)
    use_redis(redis_client)
    return Runtime(manifest, backend, batcher, settings, redis_client, ScoreCache(settings), identity, lanes)


def token_budget_for(manifest: ModelManifest, device: str, settings: Settings) -> int:
    """RERANKQ_TOKEN_BUDGET when set, else the manifest's budget for this device, else the default."""
    if "token_budget" in settings.model_fields_set:
        return settings.token_budget
    return manifest.token_budget_for(device) or settings.token_budget


def with_fault_injection(backend: Backend, settings: Settings) -> Backend:
    if settings.fault_oom_batch_tokens is None and settings.fault_oom_pair_tokens is None:
        return backend
    log.warning(
        "FAULT INJECTION ON: out-of-memory above %s batch tokens / %s pair tokens",
        settings.fault_oom_batch_tokens,
        settings.fault_oom_pair_tokens,
    )
    return OomInjectingBackend(backend, settings.fault_oom_batch_tokens, settings.fault_oom_pair_tokens)


def run_worker(options: WorkerOptions, settings: Settings) -> None:
    """Serve one model until stopped. Jobs are reserved by a thread pool so their pairs can share batches.
    Refuses libraries it was not built for before the model loads (a model that cannot load fails
    at once, Redis or not), then waits for Redis before it says anything is ready."""
    require_supported_libraries()
    start_tracing("rerankq-worker")  # from the OTEL_* variables; a bad exporter name fails here
    runtime = load_runtime(options, settings)
    wait_for_redis(settings)
    runtime.cache.publish_identity(runtime.model_name, runtime.identity)  # producers now know the weights
    install(runtime)
    # Celery's own success line carries the return value (document text when asked for);
    # rerankq logs its own line per job instead.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    app = create_worker_app(settings, runtime.model_name)
    queues = [queue_name(runtime.model_name, lane) for lane in runtime.lanes]
    worker = worker_id(runtime.model_name, os.getpid(), socket.gethostname())
    beacon, sweeper = PresenceBeacon(runtime, worker), delivery_for(app, runtime, worker, queues)
    beacon.start()  # beating before the first job is taken
    app.steps["consumer"].add(presence_step(beacon))  # announced only while Celery consumes
    stopped = CeleryExit()
    signals.worker_shutdown.connect(stopped.record, weak=False)
    signals.task_failure.connect(lambda sender, **_: count_failure(sender, runtime), weak=False)
    if port := settings.worker_metrics_port:
        metrics.serve(port)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)
    log.info("consuming %s with %d job threads", ",".join(queues), options.concurrency)
    quiet_superuser_warning()
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={options.concurrency}",
                f"--queues={','.join(queues)}",
                f"--hostname={worker}",
                "--task-events",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
            ]
        )
    finally:
        if sweeper is not None:
            sweeper.stop()
        beacon.stop()
        runtime.batcher.stop()
        log_batcher_totals(runtime)
        metrics.process_exited()
    if stopped.code:  # Celery stopped on an error it could not recover from (logged above)
        raise SystemExit(stopped.code)


def quiet_superuser_warning() -> None:
    """Celery prints a ten-line SecurityWarning on every start as root. Its danger is pickle (a
    message that runs code as root), which Celery refuses outright as root and rerankq never
    accepts (JSON only); what remains is advice, given here once in one line. The images run as
    the unprivileged user ``rerankq``."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        log.warning("running as root: run workers as an unprivileged user (the rerankq images do)")
    warnings.filterwarnings("ignore", message="You're running the worker with superuser", category=SecurityWarning)


def delivery_for(app: Celery, runtime: Runtime, worker: str, queues: list[str]) -> Sweeper | None:
    """How this worker holds its jobs. Redis: each message it takes is claimed under its name, and
    it sweeps for dead workers' claims (rerankq.worker.recovery). RabbitMQ: the broker holds them
    and gives a dead worker's back itself; the worker only keeps its lanes in order."""
    if runtime.settings.on_rabbitmq:
        app.steps["consumer"].add(lane_gate_step(LaneGate(queues, RabbitDepths(runtime.settings))))
        app.steps["consumer"].add(loop_acks_step())  # py-amqp: one thread per connection
        # Celery sets up native delayed delivery for quorum queues and warns that it cannot serve
        # ETA tasks through direct exchanges: rerankq sends none
        logging.getLogger("kombu.transport.native_delayed_delivery").setLevel(logging.ERROR)
        return None
    safe_transport.claimant = worker  # every message it takes is held under this name
    sweeper = Sweeper(runtime.redis, runtime.settings)
    sweeper.start()
    return sweeper


class CeleryExit:
    """The Celery worker's exit code, which ``worker_main`` drops (an unrecoverable error would
    end the process with 0, and its supervisor would not know)."""

    code = 0

    def record(self, sender: Any, **_: Any) -> None:
        self.code = sender.exitcode or 0


def count_failure(task: Task, runtime: Runtime) -> None:
    metrics.JOBS.labels(runtime.model_name, served_lane(task), "failed").inc()


def log_batcher_totals(runtime: Runtime) -> None:
    """At shutdown: what the batcher did over the worker's life (the benchmarks read this line)."""
    stats = runtime.batcher.stats
    totals = {"event": "batcher_totals", "model": runtime.model_name, **asdict(stats)}
    if prefixes := getattr(runtime.backend, "prefixes", None):  # an LLM reranker reusing prompts
        totals |= {"prefix": asdict(prefixes.stats)}
    log.info(json.dumps(totals | {"padding_ratio": round(stats.padding_ratio, 4)}))
