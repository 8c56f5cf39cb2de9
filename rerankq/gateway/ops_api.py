"""Operational endpoints: health (open), readiness (open), models and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.exposition import choose_encoder
from redis.exceptions import RedisError

from rerankq.core.constants import LANES, queue_name
from rerankq.core.contract import backend_of
from rerankq.core.live_workers import serving
from rerankq.core.prometheus_registry import multiprocess_registry
from rerankq.gateway.rerank_api import Service

health = APIRouter()
protected = APIRouter()
metrics_router = APIRouter()


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it answers); says nothing about Redis or workers."""
    return {"status": "ok"}


@health.get("/readyz", responses={503: {"description": "not ready: `reason` says why"}})
async def readyz(service: Service) -> JSONResponse:
    """Ready: Redis answers, and a live worker serves each model of RERANKQ_READY_MODELS (empty:
    any model at all). A gateway is ready when it can answer some request, not only the default's."""
    try:
        await service.redis.ping()
        workers = await service.admission.workers()
    except RedisError as e:
        return JSONResponse({"status": "not_ready", "reason": f"Redis unreachable: {e}"}, status_code=503)
    served = sorted({worker.model for worker in workers})
    needed = service.settings.ready_models
    if missing := [model for model in needed if model not in served] or ([] if served else ["any model"]):
        reason = f"no live worker serves {', '.join(missing)}"
        return JSONResponse({"status": "not_ready", "reason": reason, "served": served}, status_code=503)
    return JSONResponse({"status": "ready", "served": served, "workers": len(workers)})


@protected.get("/v1/models")
async def models(service: Service) -> dict[str, Any]:
    """Every known model: its lanes, how many live workers consume each and how deep each queue is."""
    workers = await service.admission.workers()
    aliases = await service.aliases.table()
    described = []
    for name in sorted({*service.manifests, *(p.model for p in workers)}):
        manifest = service.manifests.get(name)
        lanes = {
            lane: {
                "workers": len(serving(workers, name, lane)),
                "queued": await service.admission.queue_depth(queue_name(name, lane)),
            }
            for lane in LANES
        }
        described.append(
            {
                "name": name,
                "source": manifest.source if manifest else None,
                "kind": manifest.kind if manifest else None,
                "aliases": sorted(alias for alias, target in aliases.items() if name in target.targets),
                "devices": sorted({p.device for p in workers if p.model == name}),
                "backends": sorted({backend_of(p.identity) for p in workers if p.model == name}),
                "lanes": lanes,
            }
        )
    default = (await service.aliases.resolve(None)).alias or service.settings.default_model
    splits = {alias: target.shares() for alias, target in sorted(aliases.items())}
    return {"default": default, "models": described, "aliases": splits}


@metrics_router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: the text format, or OpenMetrics (with trace exemplars) when the scraper
    asks for it, as Prometheus does."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(multiprocess_registry() or REGISTRY), media_type=content_type)
