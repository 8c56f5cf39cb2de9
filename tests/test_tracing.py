"""Traces across processes: a real gateway and worker export OTLP spans to a receiver in this test,
which checks one request's spans share its trace, hang off the right parents, that every forward
pass links each job it served, and that no query or document text reaches any span."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra")

from gateway_support import AUTH, GATEWAY_ENV
from worker_support import paused

from rerankq import RerankClient
from rerankq.core.constants import queue_name
from rerankq.core.tracing_setup import exporter_names
from rerankq.testing.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from rerankq.testing.processes import GatewayProcess, WorkerProcess, free_port, start_gateway, stop_process
from rerankq.testing.processes import running_workers as start_workers
from rerankq.testing.waiting import wait_until

pytestmark = pytest.mark.slow

MODEL = "tiny-traced"
MARKER = "zqxmarker"  # in every query and document sent here; never in what is exported


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver
    assert receiver.bodies, "nothing was exported"
    for body in receiver.bodies:  # the raw protobuf, every attribute, event and resource
        assert MARKER.encode() not in body
    # Redis commands no job made (heartbeats, the broker's polling) are no traces of their own
    lone = {span.name for span in receiver.spans if span.kind == "CLIENT" and not span.parent_id}
    assert not lone, lone
    assert any(span.kind == "CLIENT" and span.parent_id for span in receiver.spans)  # a job's are


def otel_env(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s, not the default 5 s
    }


@pytest.fixture(scope="module")
def traced_worker(receiver: OtlpReceiver, model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("traced-worker")
    # a short batcher wait lets concurrent jobs share forward passes, as under load
    env = otel_env(receiver, "test-worker") | {
        "RERANKQ_MAX_WAIT_MS": "200",
        "RERANKQ_WORKER_METRICS_PORT": str(free_port()),
    }
    with start_workers(str(model_dirs["tiny-bert"]), logs, 1, "--name", MODEL, "--concurrency", "8", env=env) as found:
        yield found[0]


@pytest.fixture(scope="module")
def traced_gateway(
    receiver: OtlpReceiver, traced_worker: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env = GATEWAY_ENV | otel_env(receiver, "test-gateway") | {"RERANKQ_DEFAULT_MODEL": MODEL}
    gateway = start_gateway(tmp_path_factory.mktemp("traced-gateway") / "gateway.log", env=env)
    try:
        yield gateway
    finally:
        stop_process(gateway.process)


def traceparent() -> tuple[str, str, str]:
    """A caller's W3C context: (header, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def rerank(gateway: GatewayProcess, header: str, documents: int = 3) -> dict:
    fresh = secrets.token_hex(4)  # never cached: each request reaches a forward pass
    body = {"query": f"{MARKER} query {fresh}", "documents": [f"{MARKER} document {i}" for i in range(documents)]}
    answer = httpx.post(f"{gateway.url}/v1/rerank", json=body, headers=AUTH | {"traceparent": header}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def in_trace(trace_id: str, *names: str):
    return lambda spans: {span.name for span in spans if span.trace_id == trace_id} >= set(names)


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, found)
    return found[0]


WORKER_SPANS = ("run/rerankq.rerank", "rerankq.tokenize", "rerankq.batch_wait", "rerankq.forward")
GATEWAY_SPANS = ("POST /v1/rerank", "rerankq.admission", "rerankq.submit", "rerankq.enqueue", "rerankq.wait")


def test_one_request_is_one_trace_from_the_gateway_through_the_queue_into_the_batch(
    receiver: OtlpReceiver, traced_gateway: GatewayProcess
) -> None:
    header, trace_id, caller_span = traceparent()
    rerank(traced_gateway, header)
    wanted = (*GATEWAY_SPANS, *WORKER_SPANS, "rerankq.cache_write", "rerankq.result_publish")
    spans = [span for span in receiver.wait_for(in_trace(trace_id, *wanted)) if span.trace_id == trace_id]
    by_name = {name: one(spans, name) for name in wanted}

    request, run = by_name["POST /v1/rerank"], by_name["run/rerankq.rerank"]
    assert request.parent_id == caller_span  # the caller's traceparent is the root's parent
    assert request.service == "test-gateway" and run.service == "test-worker"
    for child in ("rerankq.admission", "rerankq.submit", "rerankq.wait"):
        assert by_name[child].parent_id == request.span_id, child
    assert by_name["rerankq.enqueue"].parent_id == by_name["rerankq.submit"].span_id
    publish = one(spans, "apply_async/rerankq.rerank")  # Celery's instrumentation, inside our enqueue
    assert publish.parent_id == by_name["rerankq.enqueue"].span_id and run.parent_id == publish.span_id
    for child in ("rerankq.tokenize", "rerankq.batch_wait", "rerankq.cache_write", "rerankq.result_publish"):
        assert by_name[child].parent_id == run.span_id, child
    forward = by_name["rerankq.forward"]
    assert forward.parent_id == run.span_id and (trace_id, run.span_id) in forward.links
    assert by_name["rerankq.wait"].links == [(trace_id, run.span_id)]  # the result brought the worker's span back

    job_id = request.attributes["rerankq.job_id"]
    for span in (request, run, *(by_name[name] for name in wanted if name.startswith("rerankq."))):
        if span.name == "rerankq.forward":
            assert span.attributes["rerankq.job_ids"] == [job_id]
            continue
        assert span.attributes["rerankq.job_id"] == job_id, span.name
    for name in ("POST /v1/rerank", "run/rerankq.rerank", "rerankq.admission", "rerankq.tokenize"):
        attributes = by_name[name].attributes
        assert (attributes["rerankq.model"], attributes["rerankq.lane"], attributes["rerankq.documents"]) == (
            MODEL,
            "interactive",
            3,
        ), name
    assert run.attributes["rerankq.queue_wait_ms"] >= 0
    assert forward.attributes["rerankq.pairs"] == 3 and forward.attributes["rerankq.device"] == "cpu"
    assert forward.attributes["rerankq.tokens.padded"] >= forward.attributes["rerankq.tokens.real"] > 0


OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


def exemplar_of(metrics_url: str, histogram: str, trace_id: str, headers: dict[str, str]) -> str:
    """The bucket line of ``histogram`` that carries ``trace_id`` as its exemplar, once scraped."""
    found: list[str] = []

    def scraped() -> bool:
        text = httpx.get(metrics_url, headers=headers | OPENMETRICS, timeout=10).text
        found[:] = [line for line in text.splitlines() if line.startswith(f"{histogram}_bucket") and trace_id in line]
        return bool(found)

    wait_until(scraped, 30, lambda: f"no {histogram} bucket with trace {trace_id}")
    return found[0]


def test_latency_buckets_carry_the_trace_id_as_an_exemplar(
    traced_gateway: GatewayProcess, traced_worker: WorkerProcess
) -> None:
    header, trace_id, _ = traceparent()
    rerank(traced_gateway, header)
    line = exemplar_of(f"{traced_gateway.url}/metrics", "rerankq_gateway_request_seconds", trace_id, AUTH)
    assert f'# {{trace_id="{trace_id}"}}' in line and 'endpoint="/v1/rerank"' in line
    worker_metrics = f"http://127.0.0.1:{traced_worker_port(traced_worker)}/metrics"
    line = exemplar_of(worker_metrics, "rerankq_job_seconds", trace_id, {})
    assert f'model="{MODEL}"' in line


def traced_worker_port(worker: WorkerProcess) -> str:
    (port,) = re.findall(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", worker.log())
    return port


def test_each_forward_pass_links_every_job_it_served(
    receiver: OtlpReceiver, traced_gateway: GatewayProcess, client: RerankClient
) -> None:
    headers = [traceparent() for _ in range(8)]
    queue = queue_name(MODEL, "interactive")
    with ThreadPoolExecutor(8) as pool:
        # the eight jobs wait in the queue, then the worker takes them together: they share passes
        with paused(client, MODEL):
            answers = pool.map(lambda h: rerank(traced_gateway, h[0], documents=4), headers)
            wait_until(lambda: client.app.backend.client.llen(queue) == 8, 30)
        list(answers)
    traces = {trace_id for _, trace_id, _ in headers}
    spans = receiver.wait_for(
        lambda spans: (
            sum(span.name == "run/rerankq.rerank" and span.trace_id in traces for span in spans) == 8
            and sum(span.name == "rerankq.batch_wait" and span.trace_id in traces for span in spans) == 8
        )
    )
    runs = {(span.trace_id, span.span_id): span for span in spans if span.name == "run/rerankq.rerank"}
    ours = {key for key in runs if key[0] in traces}
    forwards = [span for span in spans if span.name == "rerankq.forward" and set(span.links) & ours]
    linked = set()
    for forward in forwards:
        assert set(forward.links) <= set(runs), "a forward pass links only job spans"
        served = sorted(runs[link].attributes["rerankq.job_id"] for link in forward.links)
        assert sorted(forward.attributes["rerankq.job_ids"]) == served
        assert forward.attributes["rerankq.jobs"] == len(forward.links)
        assert (forward.trace_id, forward.parent_id) == forward.links[0]  # in the first job's trace
        linked |= set(forward.links)
    assert ours <= linked, "every job's span is linked by a forward pass that served it"
    # the batcher's wait let jobs share forward passes (what makes links, not parents, necessary)
    assert any(len(forward.links) > 1 for forward in forwards)


SDK_APP = """
import sys
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from rerankq import RerankClient

provider = TracerProvider(resource=Resource.create({"service.name": "test-app"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1] + "/v1/traces")))
trace.set_tracer_provider(provider)  # the app's own OpenTelemetry set-up; rerankq only records spans
with trace.get_tracer("app").start_as_current_span("app.search") as span, RerankClient() as client:
    client.rank(sys.argv[3] + " query", [sys.argv[3] + " one", sys.argv[3] + " two"], model=sys.argv[2])
    print(format(span.get_span_context().trace_id, "032x"))
provider.shutdown()
"""


def test_the_sdk_records_under_the_callers_span(receiver: OtlpReceiver, traced_worker: object) -> None:
    app = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SDK_APP), receiver.url, MODEL, MARKER],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},  # the app's set-up alone
    )
    assert app.returncode == 0, app.stderr
    trace_id = app.stdout.split()[-1]
    spans = receiver.wait_for(in_trace(trace_id, "app.search", "rerankq.submit", "rerankq.wait", *WORKER_SPANS))
    spans = [span for span in spans if span.trace_id == trace_id]
    root = one(spans, "app.search")
    submit, wait, run = one(spans, "rerankq.submit"), one(spans, "rerankq.wait"), one(spans, "run/rerankq.rerank")
    assert submit.parent_id == root.span_id and wait.parent_id == root.span_id
    assert run.parent_id == one(spans, "rerankq.enqueue").span_id  # no Celery instrumentation in the app
    assert submit.service == "test-app" and run.service == "test-worker"
    assert wait.links == [(trace_id, run.span_id)]


def test_a_bulk_run_is_one_trace_of_record_batches_and_its_jobs_link_to_them(
    receiver: OtlpReceiver, traced_worker: object, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    records = [{"id": i, "query": f"{MARKER} q{i}", "documents": [f"{MARKER} d{i}", "x"]} for i in range(5)]
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    output = tmp_path / "out.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "rerankq", "bulk", "run", str(source), "--output", str(output), "--model", MODEL],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **otel_env(receiver, "test-bulk")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    spans = receiver.wait_for(lambda spans: any(s.name == "rerankq.bulk.run" for s in spans))
    bulk = one([span for span in spans if span.service == "test-bulk"], "rerankq.bulk.run")
    batches = [span for span in spans if span.name == "rerankq.bulk.records" and span.trace_id == bulk.trace_id]
    assert batches and all(batch.parent_id == bulk.span_id for batch in batches)
    assert sum(batch.attributes["rerankq.records"] for batch in batches) == 5
    batch_keys = {(batch.trace_id, batch.span_id) for batch in batches}
    jobs = receiver.wait_for(
        lambda spans: sum(s.name == "run/rerankq.rerank" and bool(set(s.links) & batch_keys) for s in spans) == 5
    )
    for job in (span for span in jobs if span.name == "run/rerankq.rerank" and set(span.links) & batch_keys):
        assert job.trace_id != bulk.trace_id  # each job a trace of its own: a run of millions is not one trace
        assert job.attributes["rerankq.lane"] == "bulk"


def test_tracing_is_off_unless_an_exporter_or_endpoint_is_named() -> None:
    assert exporter_names({}) == []
    assert exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert exporter_names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ["otlp", "console"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) == []


OFF_PROBE = """
import sys
from fastapi.testclient import TestClient
from rerankq import RerankClient
from rerankq.core import tracing
from rerankq.gateway import create_app

body = {"query": "q", "documents": ["a", "b"], "model": sys.argv[1]}
with RerankClient() as client, TestClient(create_app()) as gateway:
    assert len(client.rank("q", ["a", "b"], model=sys.argv[1], cache=False)) == 2
    answer = gateway.post("/v1/rerank", json=body)
    assert answer.status_code == 200, answer.text
assert not tracing.enabled()
print(sorted(name for name in sys.modules if name.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation"))))
"""


def test_without_otel_variables_a_gateway_and_the_sdk_load_no_tracing_sdk(traced_worker: object) -> None:
    """Off costs nothing: a gateway app and an SDK client answering real requests, with the extra
    installed, load neither OpenTelemetry's SDK nor an instrumentation, and record nothing."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    environment |= {"RERANKQ_API_KEYS": ""}
    probe = subprocess.run(
        [sys.executable, "-c", OFF_PROBE, MODEL], capture_output=True, text=True, timeout=120, env=environment
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines()[-1] == "[]"


def test_a_worker_asked_for_an_exporter_not_installed_says_so_in_one_line(model_dirs: dict[str, Path]) -> None:
    worker = subprocess.run(
        [sys.executable, "-m", "rerankq", "worker", "--model", str(model_dirs["tiny-bert"]), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin_json"},
    )
    assert worker.returncode == 2
    assert "OTEL_TRACES_EXPORTER" in worker.stderr and "zipkin_json" in worker.stderr
    assert "Traceback" not in worker.stderr
