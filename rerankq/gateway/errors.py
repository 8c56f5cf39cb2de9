"""Domain errors to HTTP, at the edge only. Every error body is JSON:

``{"error": text, "error_type": kind, "message": text, ...details}``: TEI clients read ``error``
and ``error_type``, Cohere's read ``message``. Details name the field and limit, the job id, or
the known models, as the error has them.

====================================  ======  ====================
error                                 status  error_type
====================================  ======  ====================
schema error (FastAPI validation)     422     validation
InvalidRequest                        422     validation
RequestTooLarge, PayloadTooLarge      413     too_large
Unauthorized                          401     unauthorized
UnknownModel                          404     unknown_model
JobNotFound, unknown route            404     not_found
Conflict (job cannot be cancelled)    409     conflict
JobCancelled                          409     cancelled
QueueFull                             429     queue_full
NoWorkers                             503     no_workers
GatewayBusy                           503     overloaded
Redis unreachable                     503     unavailable
IncompatibleFormat (rolling upgrade)  503     incompatible_format
JobFailed (worker error)              502     job_failed
JobTimeout                            504     timeout
anything else (a bug)                 500     internal
====================================  ======  ====================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from rerankq.errors import (
    BrokerUnavailable,
    IncompatibleFormat,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    NoWorkers,
    QueueFull,
    RequestTooLarge,
    UnknownModel,
)
from rerankq.gateway.service import GatewayBusy

log = logging.getLogger("rerankq.gateway")


class Unauthorized(Exception):
    def __str__(self) -> str:
        return "missing or invalid API key: send `Authorization: Bearer <key>`"


class PayloadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(limit)

    def __str__(self) -> str:
        return f"request body larger than {self.limit} bytes (RERANKQ_MAX_BODY_BYTES)"


class Conflict(Exception):
    """The request is valid but the job's state forbids it (cancelling a finished job)."""


def error_response(
    status_code: int, error_type: str, message: str, headers: Mapping[str, str] | None = None, **details: Any
) -> JSONResponse:
    body = {"error": message, "error_type": error_type, "message": message, **details}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


async def _validation(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
    field = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    return error_response(422, "validation", f"invalid {field}: {first['msg']}", field=field)


async def _invalid(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, InvalidRequest)
    status, kind = (413, "too_large") if isinstance(e, RequestTooLarge) else (422, "validation")
    return error_response(status, kind, str(e), field=e.field, limit=e.limit)


async def _unauthorized(_: Request, e: Exception) -> JSONResponse:
    return error_response(401, "unauthorized", str(e), headers={"WWW-Authenticate": "Bearer"})


async def _unknown_model(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, UnknownModel)
    return error_response(404, "unknown_model", str(e), field="model", known_models=e.known)


async def _job_not_found(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, JobNotFound)
    return error_response(404, "not_found", str(e), job_id=e.job_id)


async def _conflict(_: Request, e: Exception) -> JSONResponse:
    return error_response(409, "conflict", str(e))


async def _queue_full(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, QueueFull)
    return error_response(429, "queue_full", str(e), headers=_retry_after(e.retry_after_s), queue=e.queue)


async def _no_workers(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, NoWorkers)
    return error_response(503, "no_workers", str(e), model=e.model, lane=e.lane)


async def _busy(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, GatewayBusy)
    return error_response(503, "overloaded", str(e), headers=_retry_after(e.retry_after_s))


async def _redis_down(_: Request, e: Exception) -> JSONResponse:
    log.warning("redis unreachable: %s", e)
    return error_response(
        503, "unavailable", "the queue (Redis) is unreachable; retry shortly", headers=_retry_after(2)
    )


async def _incompatible(_: Request, e: Exception) -> JSONResponse:
    """An alias or result written by a newer release: nothing a retry fixes before the upgrade ends."""
    assert isinstance(e, IncompatibleFormat)
    log.error("%s", e)
    return error_response(503, "incompatible_format", str(e), headers=_retry_after(30), found=e.found)


async def _job_cancelled(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, JobCancelled)
    return error_response(409, "cancelled", str(e), job_id=e.job_id)


async def _job_failed(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, JobFailed)
    return error_response(502, "job_failed", str(e), job_id=e.job_id)


async def _timeout(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, JobTimeout)
    status_url = str(request.url_for("get_job", job_id=e.job_id))
    return error_response(
        504, "timeout", f"{e}; poll {status_url}", job_id=e.job_id, status=e.status, status_url=status_url
    )


async def _http(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, HTTPException)
    kind = "not_found" if e.status_code == 404 else "http"
    return error_response(e.status_code, kind, str(e.detail), headers=e.headers)


async def _internal(_: Request, e: Exception) -> JSONResponse:
    log.exception("unhandled gateway error", exc_info=e)
    return error_response(500, "internal", "internal error; see the gateway log")


HANDLERS: dict[type[Exception], Any] = {
    RequestValidationError: _validation,
    InvalidRequest: _invalid,
    Unauthorized: _unauthorized,
    UnknownModel: _unknown_model,
    JobNotFound: _job_not_found,
    Conflict: _conflict,
    QueueFull: _queue_full,
    NoWorkers: _no_workers,
    GatewayBusy: _busy,
    RedisError: _redis_down,
    BrokerUnavailable: _redis_down,
    IncompatibleFormat: _incompatible,
    JobCancelled: _job_cancelled,
    JobFailed: _job_failed,
    JobTimeout: _timeout,
    HTTPException: _http,
    Exception: _internal,
}


def install_error_handlers(app: FastAPI) -> None:
    for exception, handler in HANDLERS.items():
        app.add_exception_handler(exception, handler)
