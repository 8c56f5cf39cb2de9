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
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from rerankq.errors import InvalidRequest

EXPORTER_GROUP = "opentelemetry_traces_exporter"  # the SDK's entry point group for span exporters
PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
REDIS_SCOPE = "opentelemetry.instrumentation.redis"


def configure(service: str, exporters: Sequence[str], environ: Mapping[str, str]) -> TracerProvider:
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # configured already in this process
        return current
    classes = [exporter_class(name, environ) for name in exporters]  # a bad name fails before anything is set
    provider = TracerProvider(resource=resource(service, environ))  # the sampler: OTEL_TRACES_SAMPLER
    for exporter in classes:
        provider.add_span_processor(WithoutLoneRedisCommands(BatchSpanProcessor(exporter())))
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


class WithoutLoneRedisCommands(SpanProcessor):
    """Passes every span on except a Redis command outside any other span: a worker's heartbeat,
    the broker's polling, a gateway's alias refresh would each be a one-span trace every second.
    redis-py's instrumentation patches the client class, so it cannot tell those from a job's
    commands itself, and has no option to (written by hand for that)."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        scope = span.instrumentation_scope
        if span.parent is None and scope is not None and scope.name == REDIS_SCOPE:
            return
        self._inner.on_end(span)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
