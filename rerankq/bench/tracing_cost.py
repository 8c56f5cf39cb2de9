"""What tracing costs a job: the latency scenario's 1 x 20 jobs, one at a time on an idle worker,
with tracing off and on, in alternating rounds (a slower minute of the machine hits both).

On: the worker exports every span (OTLP over HTTP, to a receiver in this process, the batch
processor's default delays) and the SDK records its own spans under a tracer of this process
(``tracing.recorded_by``). Off: the same worker start without an ``OTEL_*`` variable, the code
path every user without tracing runs. Needs the ``otel`` extra.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rerankq.bench.pipeline import WorkerSetup, serving
from rerankq.bench.scenarios import PASSAGES, percentile
from rerankq.bench.workload import Job, make_jobs
from rerankq.core import tracing

Record = dict[str, Any]
ROUNDS = 4


def tracing_comparison(setup: WorkerSetup, samples: tuple[int, int]) -> Iterator[Record]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from rerankq.testing.otlp_receiver import otlp_receiver

    jobs = make_jobs(*samples, PASSAGES)
    timed: dict[str, list[float]] = {"off": [], "on": []}
    with otlp_receiver() as receiver:
        provider = TracerProvider(resource=Resource.create({"service.name": "rerankq-bench"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces")))
        worker_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "rerankq-bench-worker"}
        for _ in range(ROUNDS):
            timed["off"] += _latencies(setup, jobs, {})
            with tracing.recorded_by(provider):
                timed["on"] += _latencies(setup, jobs, worker_env)
        provider.shutdown()
        worker_spans = [span for span in receiver.spans if span.service == "rerankq-bench-worker"]
        jobs_traced = sum(span.name == "run/rerankq.rerank" for span in worker_spans)
    off, on = percentile(timed["off"], 50), percentile(timed["on"], 50)
    yield {
        "off_ms_p50": off,
        "on_ms_p50": on,
        "on_ms_p99": percentile(timed["on"], 99),
        "off_ms_p99": percentile(timed["off"], 99),
        "overhead_ms_p50": on - off,
        "ratio": on / off,
        "worker_spans_per_job": round(len(worker_spans) / max(jobs_traced, 1), 1),
    }


def _latencies(setup: WorkerSetup, jobs: Sequence[Job], env: dict[str, str]) -> list[float]:
    with serving(setup, 1, env=env) as pipeline:
        pipeline.cache = False  # every round computes: the same jobs run in each
        return [pipeline.e2e_ms(job) for job in jobs]
