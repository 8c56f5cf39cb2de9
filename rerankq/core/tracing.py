"""Spans around a job's steps (OpenTelemetry), or nothing.

Every process that touches a job calls these: the gateway, the SDK, the worker, the batcher. They
record only where a tracer provider is configured in the process: a rerankq process configures one
from the standard ``OTEL_*`` variables (``rerankq.core.tracing_setup``); an app using the SDK
records when the app configured OpenTelemetry itself. Otherwise (the ``otel`` extra not
installed, or nothing configured) each call is one check and returns a shared no-op; a
process rerankq starts with tracing off settles that at start-up (``settle``). Only
OpenTelemetry's API is read here (imported on first use; FastAPI imports it anyway); its SDK,
exporters and instrumentations load only when tracing is on (``rerankq.core.tracing_sdk``).

Spans carry ids, names and counts (``job_attributes``), never a query or document text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, Tracer

    from rerankq.core.contract import RerankJob

Attributes = Mapping[str, str | int | float | bool | Sequence[str]]
TRACER_NAME = "rerankq"


class _NoSpan:
    """What ``span`` yields when nothing records: callers set attributes without checking."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Attributes) -> None:
        pass

    def is_recording(self) -> bool:
        return False


NO_SPAN = _NoSpan()
_NOTHING: AbstractContextManager[Any] = nullcontext(NO_SPAN)


class _State:
    off = False  # decided: nothing records in this process (no API installed, or tracing off)
    tracer: Tracer | None = None


def settle() -> None:
    """Tracing is off in a process rerankq starts (``tracing_setup.start_tracing``): unless the
    process configured OpenTelemetry itself already, every call here returns at once from now on,
    without looking at OpenTelemetry again."""
    if _tracer() is None:
        _State.off = True


def _tracer() -> Tracer | None:
    """This process's rerankq tracer, or None while no tracer provider is configured here (the
    global provider is still OpenTelemetry's placeholder). Checked per call in an app using the
    SDK, so an app that configures OpenTelemetry after creating a client is traced from then on."""
    if _State.tracer is not None or _State.off:
        return _State.tracer
    try:
        from opentelemetry import trace
    except ImportError:
        _State.off = True
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return None
    _State.tracer = provider.get_tracer(TRACER_NAME)
    return _State.tracer


@contextmanager
def recorded_by(tracer_provider: Any) -> Iterator[None]:
    """This process's rerankq spans go to ``tracer_provider`` inside the block, whatever the
    global one: the tracing benchmark times on and off in one process (OpenTelemetry lets the
    global provider be set only once)."""
    saved = _State.tracer
    _State.tracer = tracer_provider.get_tracer(TRACER_NAME)
    try:
        yield
    finally:
        _State.tracer = saved


def enabled() -> bool:
    return _tracer() is not None


def job_attributes(job: RerankJob, lane: str | None = None) -> dict[str, str | int]:
    """What every span of a job carries: its id, model, lane and document count (no text)."""
    return {
        "rerankq.job_id": job.job_id,
        "rerankq.model": job.model,
        "rerankq.lane": lane or job.lane,
        "rerankq.documents": len(job.documents),
    }


@dataclass(frozen=True)
class JobTrace:
    """A job's span as a shared step (a forward pass serving several jobs) sees it: what to link
    to, and the job's attributes."""

    link: SpanContext
    attributes: Mapping[str, str | int]


def job_trace(attributes: Mapping[str, str | int]) -> JobTrace | None:
    """The current span (a job's) for a shared step to link to; None when nothing records."""
    link = current_link()
    return None if link is None else JobTrace(link, attributes)


def shared_span(name: str, jobs: Sequence[JobTrace], attributes: Attributes) -> AbstractContextManager[Any]:
    """A step that serves several jobs at once: one span, in the trace of the first job it serves
    (a request served alone is one trace), linked to every job's span. Carries the jobs' ids,
    their model and lanes beside ``attributes``."""
    if not jobs:
        return _NOTHING
    first = jobs[0].attributes
    served = {
        "rerankq.job_ids": [str(job.attributes["rerankq.job_id"]) for job in jobs],
        "rerankq.model": first["rerankq.model"],
        "rerankq.lane": ",".join(sorted({str(job.attributes["rerankq.lane"]) for job in jobs})),
        "rerankq.jobs": len(jobs),
    }
    return span(name, served | dict(attributes), links=[job.link for job in jobs], parent=jobs[0].link)


def span(
    name: str, attributes: Attributes | None = None, *, links: Sequence[SpanContext] = (), parent: Any = None
) -> AbstractContextManager[Any]:
    """A span around a block, current inside it (children and propagated headers hang off it).
    ``parent``: a ``SpanContext`` to hang it off instead of the current span (the batcher's
    thread has none of its own)."""
    tracer = _tracer()
    if tracer is None:
        return _NOTHING
    return _current_span(tracer, name, attributes, links, parent)


@contextmanager
def _current_span(
    tracer: Tracer, name: str, attributes: Attributes | None, links: Sequence[SpanContext], parent: SpanContext | None
) -> Iterator[Any]:
    from opentelemetry import trace

    context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
    with tracer.start_as_current_span(
        name, context=context, attributes=attributes, links=[trace.Link(link) for link in links]
    ) as current:
        yield current


def record(name: str, start_ns: int, end_ns: int, attributes: Attributes | None = None) -> None:
    """A span measured before it could be opened (the wait for a batch, timed by the batcher),
    under the current span."""
    tracer = _tracer()
    if tracer is not None:
        tracer.start_span(name, attributes=attributes, start_time=start_ns).end(end_time=end_ns)


def annotate(attributes: Attributes) -> None:
    """Attributes on the current span (an instrumentation's: the HTTP request, the Celery task)."""
    if _tracer() is not None:
        from opentelemetry import trace

        trace.get_current_span().set_attributes(attributes)


def current_link() -> SpanContext | None:
    """The current span's context, for a span elsewhere to link to (or hang off) later."""
    if _tracer() is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def headers() -> dict[str, str]:
    """W3C trace context of the current span (``traceparent``, ``tracestate``) for a message's
    headers: empty when nothing records."""
    if _tracer() is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


LINK_HEADER = "rerankq_trace_link"  # a message's link (not parent) to the span that sent it


def link_headers() -> dict[str, str]:
    """Message headers for a job that opens a trace of its own linked to the current span (a bulk
    run's job: a run of a million jobs must not make one trace): empty when nothing records."""
    parent = traceparent()
    return {} if parent is None else {LINK_HEADER: parent}


def detached() -> AbstractContextManager[Any]:
    """No current span inside (what is sent from here starts its own trace)."""
    if _tracer() is None:
        return _NOTHING
    return _detached()


@contextmanager
def _detached() -> Iterator[None]:
    from opentelemetry import context

    token = context.attach(context.Context())
    try:
        yield
    finally:
        context.detach(token)


def traceparent() -> str | None:
    """The current span as a W3C ``traceparent`` value (what a result carries back)."""
    return headers().get("traceparent")


def link_current_to(traceparent_value: str | None) -> None:
    """Link the current span to the span a ``traceparent`` names (a waiter to the worker that
    answered: another trace when the job was sent by another process)."""
    if traceparent_value is None or _tracer() is None:
        return
    from opentelemetry import propagate, trace

    linked = trace.get_current_span(propagate.extract({"traceparent": traceparent_value})).get_span_context()
    if linked.is_valid:
        trace.get_current_span().add_link(linked)


def exemplar() -> dict[str, str] | None:
    """The current trace's id as a Prometheus exemplar (``{"trace_id": ...}``), when sampled."""
    if _tracer() is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return {"trace_id": trace.format_trace_id(context.trace_id)}
