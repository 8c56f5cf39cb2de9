"""Turn tracing on in a rerankq process (gateway, worker, bulk run) from the standard ``OTEL_*``
variables, with the ``otel`` extra installed (``pip install 'rerankq[otel]'``).

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``, or any installed one)
or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``: then
``otlp``); off when none is, when it says ``none``, or with ``OTEL_SDK_DISABLED=true``. Unlike
OpenTelemetry's auto-instrumentation, installing the extra alone does not start exporting to
localhost. Everything else (the sampler, the batch processor's delays, the endpoint, headers,
service name and resource) is the OpenTelemetry SDK's own reading of its variables.

Those variables are OpenTelemetry's, not rerankq's settings: read here (to decide on or off) and
by the SDK itself, so they live outside ``rerankq.core.settings``. The SDK is imported only once
tracing is asked for (``rerankq.core.tracing_sdk``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from rerankq.core import tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("rerankq.tracing")

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The trace exporters the variables ask for; empty: tracing off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    asked = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not asked:
        return ["otlp"] if any(environ.get(name) for name in ENDPOINTS) else []
    return [name for name in (part.strip() for part in asked.split(",")) if name and name != "none"]


def start_tracing(service: str, environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Configure this process's tracer provider and the Celery and redis-py instrumentations;
    None (and nothing imported) when tracing is off. ``service``: the ``service.name`` unless the
    variables name one. Once per process: a second call returns the first provider.
    ``InvalidRequest`` names a variable that asks for an exporter not installed."""
    environ = os.environ if environ is None else environ
    names = exporter_names(environ)
    if not names:
        tracing.settle()
        return None
    try:
        from rerankq.core import tracing_sdk
    except ImportError as e:
        log.warning("%s asks for traces, but %s: pip install 'rerankq[otel]'", ", ".join(names), e)
        tracing.settle()
        return None
    provider = tracing_sdk.configure(service, names, environ)
    log.info("tracing on: %s spans of %s", ", ".join(names), provider.resource.attributes.get("service.name"))
    return provider
