"""Gateway metrics (prometheus-client): requests by route and status, latency, waiting requests.

With ``--workers N`` the gateway runs in prometheus-client's multiprocess mode (see
``rerankq.gateway.server``): every process writes its values to a shared folder and ``/metrics`` serves
their sum, whichever process answers the scrape.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerankq.core import tracing

REQUESTS = Counter("rerankq_gateway_requests_total", "HTTP requests answered", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "rerankq_gateway_request_seconds",
    "Time from request to response",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
WAITING = Gauge("rerankq_gateway_waiting_requests", "Requests waiting for a job result", multiprocess_mode="livesum")
CALLBACKS = Counter("rerankq_gateway_callbacks_total", "Job callbacks by outcome", ["outcome"])


# Probes and scrapes are not traffic: counted, a failing readiness probe would feed the 5xx
# alert and a scrape every 15 s the latency panels.
UNCOUNTED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestMetrics:
    """Counts and times every request under its route template (``/v1/jobs/{job_id}``), never
    the raw path: unknown paths are one ``other`` label, so scanners cannot blow up cardinality.
    Probes and scrapes (``UNCOUNTED_PATHS``) are left out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # a response never started counts as a server error

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint = self._endpoint(scope)
            REQUESTS.labels(endpoint, scope["method"], str(status)).inc()
            # a traced request's id rides along (an exemplar): a slow bucket in Grafana opens its trace
            LATENCY.labels(endpoint).observe(time.perf_counter() - started, tracing.exemplar())

    def _endpoint(self, scope: Scope) -> str:
        # the router records the route it matched in the (shared) scope
        return str(getattr(scope.get("route"), "path", "other"))
