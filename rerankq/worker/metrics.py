"""Worker metrics (prometheus-client).

A worker serves its own metrics at ``--metrics-port`` (one worker per pod or container). Where
several worker processes share a host, set ``PROMETHEUS_MULTIPROC_DIR`` to a folder they share:
every process then writes its values there (prometheus-client's multiprocess mode) and
``rerankq exporter`` serves them summed, next to the queue depths.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram, multiprocess, start_http_server

from rerankq.core import tracing
from rerankq.core.contract import JobStats
from rerankq.core.prometheus_registry import multiprocess_registry

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

QUEUE_WAIT = Histogram(
    "rerankq_queue_wait_seconds", "Enqueue to a worker starting the job", ["model", "lane"], buckets=SECONDS
)
JOB_SECONDS = Histogram(
    "rerankq_job_seconds",
    "Enqueue to result stored, per job (end to end on the queue)",
    ["model", "lane"],
    buckets=SECONDS,
)
JOBS = Counter("rerankq_jobs_total", "Jobs a worker finished, by outcome", ["model", "lane", "outcome"])
REJECTED = Counter("rerankq_messages_rejected_total", "Messages on rerankq queues that were not jobs", ["kind"])
HELD = Gauge(
    "rerankq_jobs_held", "Jobs reserved by a worker and not finished", ["model", "lane"], multiprocess_mode="livesum"
)
BATCH_PAIRS = Histogram(
    "rerankq_batch_pairs", "Pairs per forward pass", ["model", "device"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
BATCH_TOKENS = Histogram(
    "rerankq_batch_padded_tokens",
    "Padded tokens (pairs x longest pair) per forward pass",
    ["model", "device"],
    buckets=(128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
TOKENS = Counter(
    "rerankq_tokens_total", "Tokens in forward passes; padded / real is the padding ratio", ["model", "kind"]
)
INFERENCE = Histogram("rerankq_inference_seconds", "One forward pass", ["model", "device", "backend"], buckets=SECONDS)
CACHE = Counter(
    "rerankq_job_documents_total", "Documents of served jobs, by where the score came from", ["model", "source"]
)
OOM_SPLITS = Counter("rerankq_oom_splits_total", "Batches split after running out of memory", ["model", "device"])
CPU_REROUTES = Counter("rerankq_cpu_reroutes_total", "Jobs moved to the cpu lane after out-of-memory", ["model"])
TOKEN_BUDGET = Gauge(
    "rerankq_token_budget",
    "Padded tokens a forward pass may hold now (halves after out-of-memory, recovers after)",
    ["model", "device"],
    multiprocess_mode="livemax",
)
MODEL_LOAD = Gauge(
    "rerankq_model_load_seconds",
    "Load, checks and warm-up time of the model (an ONNX backend's export included)",
    ["model", "device", "backend"],
    multiprocess_mode="livemax",
)
TOP_SCORE = Histogram(
    "rerankq_top_score",
    "Best normalized score per job; a drifting distribution means a broken model or changed traffic",
    ["model"],
    buckets=tuple(round(0.1 * i, 1) for i in range(1, 11)),
)


class BatchMetrics:
    """What the batcher reports about each forward pass (see rerankq.worker.batcher.BatchObserver)."""

    def __init__(self, model: str, device: str, backend: str = "torch") -> None:
        self._pairs = BATCH_PAIRS.labels(model, device)
        self._tokens = BATCH_TOKENS.labels(model, device)
        self._real = TOKENS.labels(model, "real")
        self._padded = TOKENS.labels(model, "padded")
        self._seconds = INFERENCE.labels(model, device, backend)
        self._splits = OOM_SPLITS.labels(model, device)
        self._budget = TOKEN_BUDGET.labels(model, device)

    def batch(self, lengths: Sequence[int], seconds: float) -> None:
        padded = len(lengths) * max(lengths)
        self._pairs.observe(len(lengths))
        self._tokens.observe(padded)
        self._real.inc(sum(lengths))
        self._padded.inc(padded)
        self._seconds.observe(seconds)

    def oom_split(self) -> None:
        self._splits.inc()

    def budget(self, tokens: int) -> None:
        self._budget.set(tokens)


def observe_job(model: str, lane: str, documents: int, stats: JobStats, top_score: float | None) -> None:
    """A finished job: its waits, where its scores came from, its best score (normalized only).
    A traced job's trace id rides along as the exemplar of its latency buckets (not in
    multiprocess mode: prometheus-client keeps none there)."""
    exemplar = tracing.exemplar()
    QUEUE_WAIT.labels(model, lane).observe(stats.queue_ms / 1000, exemplar)
    JOB_SECONDS.labels(model, lane).observe((stats.queue_ms + stats.tokenize_ms + stats.infer_ms) / 1000, exemplar)
    JOBS.labels(model, lane, "succeeded").inc()
    CACHE.labels(model, "cache").inc(stats.cache_hits)
    CACHE.labels(model, "model").inc(documents - stats.cache_hits)
    if top_score is not None:
        TOP_SCORE.labels(model).observe(top_score)


def serve(port: int) -> None:
    """This process's metrics (or, in multiprocess mode, the host's) at http://0.0.0.0:port/metrics."""
    registry = multiprocess_registry()
    if registry is None:
        start_http_server(port)
    else:
        start_http_server(port, registry=registry)


def process_exited() -> None:
    """In multiprocess mode, drop this process's live gauges (held jobs, budget)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
