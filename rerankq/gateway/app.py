"""The gateway's FastAPI app: routers, auth, limits, metrics and error handlers put together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI

from rerankq.gateway import jobs_api, ops_api, rerank_api
from rerankq.gateway.auth import ApiKeys, require_api_key
from rerankq.gateway.callbacks import CallbackDispatcher
from rerankq.gateway.errors import install_error_handlers
from rerankq.gateway.limits import BodySizeLimit
from rerankq.gateway.metrics import RequestMetrics
from rerankq.gateway.service import RerankService
from rerankq.producer.aio import AsyncRerankClient
from rerankq.producer.redis_clients import connect_async
from rerankq.producer.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect_async(settings.redis_url, settings.redis_sentinel_master, health_check_interval=30)
        service = RerankService(settings, AsyncRerankClient(settings=settings), redis)
        await service.start()
        app.state.service = service
        app.state.callbacks = _callbacks(settings, service, redis)
        try:
            yield
        finally:
            if app.state.callbacks is not None:
                await app.state.callbacks.stop()
            await service.stop()
            await redis.aclose()

    # no redirect_slashes: API clients get a JSON 404, not a redirect to another path
    app = FastAPI(title="rerankq gateway", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.state.api_keys = ApiKeys(settings.api_keys)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics)
    authenticated = [Depends(require_api_key)]
    app.include_router(ops_api.health)
    app.include_router(ops_api.metrics_router, dependencies=[] if settings.public_metrics else authenticated)
    app.include_router(ops_api.protected, dependencies=authenticated)
    app.include_router(rerank_api.router, dependencies=authenticated)
    app.include_router(jobs_api.router, dependencies=authenticated)
    return app


def _callbacks(settings: Settings, service: RerankService, redis: aioredis.Redis) -> CallbackDispatcher | None:
    if settings.callback_secret is None:
        return None
    dispatcher = CallbackDispatcher(redis, settings, lambda job_id: jobs_api.finished_body(service, job_id))
    dispatcher.start()
    return dispatcher
