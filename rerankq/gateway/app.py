"""The gateway's FastAPI app: routers, auth, limits, metrics and error handlers put together."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from fastapi import FastAPI, Security

from rerankq import __version__
from rerankq.core.redis_clients import connect_async
from rerankq.core.settings import Settings, get_settings
from rerankq.core.tracing_setup import start_tracing
from rerankq.gateway import jobs_api, ops_api, rerank_api
from rerankq.gateway.auth import AuthGate, bearer
from rerankq.gateway.body_limit import BodySizeLimit
from rerankq.gateway.callbacks import CallbackDispatcher
from rerankq.gateway.errors import error_responses, install_error_handlers
from rerankq.gateway.keys import KeyRingHolder
from rerankq.gateway.metrics import UNCOUNTED_PATHS, RequestMetrics
from rerankq.gateway.openapi import install_openapi
from rerankq.gateway.responses import SafeJSONResponse
from rerankq.gateway.service import RerankService
from rerankq.gateway.usage import UsageLedger
from rerankq.producer.async_client import AsyncRerankClient

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    keys = KeyRingHolder(settings)  # a bad keys file stops the gateway here, before it listens
    redis = connect_async(settings.redis_url, settings.redis_sentinel_master, health_check_interval=30)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = RerankService(settings, AsyncRerankClient(settings=settings), redis)
        await service.start()
        keys.start()
        app.state.service = service
        app.state.callbacks = _callbacks(settings, service, redis)
        try:
            yield
        finally:
            if app.state.callbacks is not None:
                await app.state.callbacks.stop()
            await keys.stop()
            await service.stop()
            await redis.aclose()

    # no redirect_slashes: API clients get a JSON 404, not a redirect to another path
    app = FastAPI(
        title="rerankq gateway",
        version=__version__,
        lifespan=lifespan,
        redirect_slashes=False,
        default_response_class=SafeJSONResponse,
    )
    install_error_handlers(app)
    install_openapi(app, settings)
    # Outermost last: metrics see every answer; the API key is checked before the body is read.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    usage = UsageLedger(redis, settings.usage_retention_days)
    app.add_middleware(
        AuthGate, keys=keys, open_paths=open_paths(settings), usage=usage, metrics_public=settings.public_metrics
    )
    app.add_middleware(RequestMetrics)
    if (tracer_provider := start_tracing("rerankq-gateway")) is not None:
        trace_requests(app, tracer_provider)  # FastAPI's instrumentation (rerankq.core.tracing_sdk.instrumented)
    authenticated = [Security(bearer)]  # declares the scheme; AuthGate checks it
    app.include_router(ops_api.health)
    app.include_router(ops_api.metrics_router, dependencies=[] if settings.public_metrics else authenticated)
    for router in (ops_api.protected, rerank_api.router, jobs_api.router):
        app.include_router(router, dependencies=authenticated, responses=error_responses())
    return app


def trace_requests(app: FastAPI, tracer_provider: TracerProvider) -> None:
    """Each request's span, from the caller's W3C ``traceparent`` when it sent one (OpenTelemetry's
    FastAPI instrumentation; probes and scrapes are left out, and so are its spans per ASGI message)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    from rerankq.core.tracing_sdk import instrumented

    if not instrumented("fastapi", os.environ):
        return
    excluded = ",".join(f"^https?://[^/]+{path}$" for path in sorted(UNCOUNTED_PATHS))
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, excluded_urls=excluded, exclude_spans=["receive", "send"]
    )


def open_paths(settings: Settings) -> frozenset[str]:
    """What answers without an API key: the probes, the API's own description, and /metrics when public."""
    paths = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    return frozenset(paths | ({"/metrics"} if settings.public_metrics else set()))


def _callbacks(settings: Settings, service: RerankService, redis: aioredis.Redis) -> CallbackDispatcher | None:
    if settings.callback_secret is None:
        return None
    dispatcher = CallbackDispatcher(redis, settings, lambda job_id: jobs_api.finished_body(service, job_id))
    dispatcher.start()
    return dispatcher
