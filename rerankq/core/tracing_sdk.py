"""The OpenTelemetry SDK set up for a rerankq process (``rerankq.core.tracing_setup`` decides
whether; this module needs the ``otel`` extra).

The instrumentations do the protocol work: Celery's carries each job's trace context in its
message headers and opens the worker's task span; redis-py's times each command under a job's
spans (its statements hold the command name only, never keys or values); FastAPI's opens the
gateway's request span (``rerankq.gateway.app``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points, version

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from rerankq.errors import InvalidRequest

EXPORTER_GROUP = "opentelemetry_traces_exporter"  # the SDK's entry point group for span exporters
PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def configure(service: str, exporters: Sequence[str], environ: Mapping[str, str]) -> TracerProvider:
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # configured already in this process
        return current
    classes = [exporter_class(name, environ) for name in exporters]  # a bad name fails before anything is set
    configured = TracerProvider(shutdown_on_exit=False).sampler  # the SDK's reading of OTEL_TRACES_SAMPLER
    provider = TracerProvider(resource=resource(service, environ), sampler=WithoutLoneClientSpans(configured))
    for exporter in classes:
        provider.add_span_processor(BatchSpanProcessor(exporter()))
    trace.set_tracer_provider(provider)
    if instrumented("celery", environ):
        CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    if instrumented("redis", environ):
        RedisInstrumentor().instrument(tracer_provider=provider)
    return provider


def instrumented(library: str, environ: Mapping[str, str]) -> bool:
    """Unless ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (OpenTelemetry's own variable, a comma-separated
    list: ``redis``, ``celery``, ``fastapi``) turns that library's instrumentation off."""
    disabled = environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return library not in {name.strip() for name in disabled.split(",")}


def resource(service: str, environ: Mapping[str, str]) -> Resource:
    attributes = {"service.version": version("rerankq")}
    # attributes given here win over the variables: name the service only where the user did not
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = service
    return Resource.create(attributes)


def exporter_class(name: str, environ: Mapping[str, str]) -> type[SpanExporter]:
    """An exporter by its entry point name (the SDK's registry); ``otlp``: OTLP over HTTP/protobuf,
    or gRPC when the protocol variable says ``grpc`` (that exporter is the user's to install)."""
    if name == "otlp":
        protocol = next((environ[key] for key in PROTOCOLS if environ.get(key)), "http/protobuf")
        name = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    found = {point.name: point for point in entry_points(group=EXPORTER_GROUP)}
    if name not in found:
        hint = "pip install opentelemetry-exporter-otlp-proto-grpc" if name == "otlp_proto_grpc" else ""
        raise InvalidRequest(
            "OTEL_TRACES_EXPORTER", f"names {name!r}, not an installed exporter ({', '.join(sorted(found))})", hint
        )
    loaded: type[SpanExporter] = found[name].load()
    return loaded


class WithoutLoneClientSpans(Sampler):
    """The configured sampler (``OTEL_TRACES_SAMPLER``), except that a client call outside any
    other span is never recorded. In a rerankq process those are Redis commands no job made (a
    worker's heartbeat, the broker's polling, a gateway's alias refresh): each would be a trace of
    one span, several a second. redis-py's instrumentation patches the client class, so it cannot
    tell them from a job's commands itself; dropped here, before the span exists, they cost next
    to nothing (written by hand: no option of the instrumentation does this)."""

    def __init__(self, configured: Sampler) -> None:
        self._configured = configured

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        lone = kind is SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid
        if lone:
            return SamplingResult(Decision.DROP)
        return self._configured.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"WithoutLoneClientSpans({self._configured.get_description()})"
