"""Domain errors to HTTP, at the edge only: one table (``RULES``), one handler.

Every error body is JSON, ``{"error": text, "error_type": kind, "message": text, ...details}``:
TEI clients read ``error`` and ``error_type``, Cohere's read ``message``. Details name the field
and limit, the job id, or the known models, as the error has them. An exception is answered by
the rule of its nearest class in ``RULES`` (``RequestTooLarge`` before ``InvalidRequest``);
``markdown_table()`` renders the table for docs/gateway.md, so the docs and the code are one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from rerankq.core.contract import invisible_text, visible_text_pattern
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
    field_path,
    invalid_request,
)
from rerankq.gateway.rate_limits import RateLimited
from rerankq.gateway.responses import SafeJSONResponse
from rerankq.gateway.service import GatewayBusy

log = logging.getLogger("rerankq.gateway")
REDIS_RETRY_AFTER_S = 2  # Redis restarting or failing over is back within seconds
UPGRADE_RETRY_AFTER_S = 30  # a rolling upgrade takes minutes
NO_WORKERS_RETRY_AFTER_S = 10  # a worker starting (or scaled from zero) loads its model first
POLL_AFTER_S = 1  # a timed-out job's status is worth asking for again this soon


class Unauthorized(Exception):
    def __str__(self) -> str:
        return "missing or invalid API key: send `Authorization: Bearer <key>`"


class Forbidden(Exception):
    """The key is valid but lacks the scope the endpoint needs (HTTP 403)."""

    def __init__(self, key: str, scope: str) -> None:
        self.key = key
        self.scope = scope
        super().__init__(key, scope)

    def __str__(self) -> str:
        return f"key {self.key!r} lacks the {self.scope!r} scope this endpoint needs"


class PayloadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(limit)

    def __str__(self) -> str:
        return f"request body larger than {self.limit} bytes (RERANKQ_MAX_BODY_BYTES)"


class Conflict(Exception):
    """The request is valid but the job's state forbids it (cancelling a finished job)."""


Details = Callable[[Any], dict[str, Any]]


def _none(_: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Rule:
    """How one kind of error is answered."""

    status: int
    error_type: str
    when: str  # what the docs say about it
    details: Details = _none  # extra body fields
    retry_after: Callable[[Any], int | None] = lambda _: None
    message: Callable[[Any], str] = str
    headers: Mapping[str, str] = field(default_factory=dict)
    headers_of: Callable[[Any], Mapping[str, str]] = lambda _: {}  # headers that depend on the error


def _field(e: InvalidRequest) -> dict[str, Any]:
    return {"field": e.field, "limit": e.limit}


def _unknown(e: UnknownModel) -> dict[str, Any]:
    suggested = {"did_you_mean": e.suggestion} if e.suggestion else {}
    return {"field": "model", "known_models": e.known, **suggested}


def _redis_down(e: Exception) -> str:
    log.warning("redis unreachable: %s", e)
    return "the queue (Redis) is unreachable; retry shortly"


def _internal(e: Exception) -> str:
    log.exception("unhandled gateway error", exc_info=e)
    return "internal error; see the gateway log"


def _incompatible(e: IncompatibleFormat) -> str:
    log.error("%s", e)
    return str(e)


RULES: dict[type[Exception], Rule] = {
    RequestValidationError: Rule(422, "validation", "the body breaks the schema (names the field)"),
    InvalidRequest: Rule(422, "validation", "a field breaks a rule (names the field and the limit)", _field),
    RequestTooLarge: Rule(413, "too_large", "too many documents or characters", _field),
    PayloadTooLarge: Rule(413, "too_large", "the body is over RERANKQ_MAX_BODY_BYTES", lambda e: {"field": "body"}),
    Unauthorized: Rule(401, "unauthorized", "no or a wrong API key", headers={"WWW-Authenticate": "Bearer"}),
    Forbidden: Rule(403, "forbidden", "the key lacks the endpoint's scope (`rerank`, `jobs`, `admin`)"),
    UnknownModel: Rule(404, "unknown_model", "no model of that name", _unknown),
    JobNotFound: Rule(404, "not_found", "no job with that id", lambda e: {"job_id": e.job_id}),
    Conflict: Rule(409, "conflict", "the job's state forbids it (cancelling a finished job)"),
    JobCancelled: Rule(409, "cancelled", "the job was cancelled", lambda e: {"job_id": e.job_id}),
    QueueFull: Rule(
        429, "queue_full", "the lane's queue is at its limit", lambda e: {"queue": e.queue}, lambda e: e.retry_after_s
    ),
    RateLimited: Rule(
        429,
        "rate_limited",
        "the key is at a per-minute limit or its share of the queue (X-RateLimit-* headers)",
        lambda e: {"limit": e.limit_name},
        lambda e: e.reset_s,
        headers_of=lambda e: e.headers(),
    ),
    NoWorkers: Rule(
        503,
        "no_workers",
        "no live worker serves the model's lane",
        lambda e: {"model": e.model, "lane": e.lane},
        lambda e: NO_WORKERS_RETRY_AFTER_S,
    ),
    GatewayBusy: Rule(
        503, "overloaded", "this gateway holds its limit of waiting requests", _none, lambda e: e.retry_after_s
    ),
    RedisError: Rule(503, "unavailable", "Redis is unreachable", _none, lambda e: REDIS_RETRY_AFTER_S, _redis_down),
    BrokerUnavailable: Rule(
        503, "unavailable", "Redis is unreachable", _none, lambda e: REDIS_RETRY_AFTER_S, _redis_down
    ),
    IncompatibleFormat: Rule(
        503,
        "incompatible_format",
        "an alias or result written by a newer release (rolling upgrade)",
        lambda e: {"found": e.found},
        lambda e: UPGRADE_RETRY_AFTER_S,
        _incompatible,
    ),
    JobFailed: Rule(502, "job_failed", "the worker failed the job (says why)", lambda e: {"job_id": e.job_id}),
    JobTimeout: Rule(
        504,
        "timeout",
        "no result within RERANKQ_GATEWAY_TIMEOUT_S (the job may finish: poll its status_url)",
        _none,
        lambda e: POLL_AFTER_S,
    ),
    HTTPException: Rule(404, "not_found", "an unknown route (other HTTP errors keep their status)"),
    # a failed answer may leave the connection unusable: the client is told to open a new one
    Exception: Rule(500, "internal", "anything else (a bug)", message=_internal, headers={"Connection": "close"}),
}


def rule_for(error: Exception) -> Rule:
    """The rule of the error's nearest class in ``RULES``."""
    return next(RULES[kind] for kind in type(error).__mro__ if kind in RULES)


class ErrorBody(BaseModel):
    """Every error's body: TEI clients read ``error`` and ``error_type``, Cohere's ``message``."""

    model_config = ConfigDict(extra="allow")

    error: str
    error_type: str
    message: str
    field: str | None = None
    limit: str | None = None


def error_response(
    status_code: int, error_type: str, message: str, headers: Mapping[str, str] | None = None, **details: Any
) -> JSONResponse:
    body = {"error": message, "error_type": error_type, "message": message, **details}
    return SafeJSONResponse(body, status_code=status_code, headers=headers)


def error_responses() -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of an API route: every status the table can answer with."""
    kinds: dict[int, list[str]] = {}
    for rule in RULES.values():
        kinds.setdefault(rule.status, []).append(rule.error_type)
    kinds.setdefault(405, ["http"])  # a known path, another method
    described = {status: ", ".join(sorted(set(types))) for status, types in kinds.items()}
    return {status: {"model": ErrorBody, "description": f"error_type: {types}"} for status, types in described.items()}


async def handle(request: Request, error: Exception) -> JSONResponse:
    """Every error the routes raise, answered by its rule."""
    if isinstance(error, RequestValidationError):
        error = _as_invalid(error)
    rule = rule_for(error)
    status, error_type, headers = rule.status, rule.error_type, {**rule.headers, **rule.headers_of(error)}
    details, message = rule.details(error), rule.message(error)
    if (retry_after := rule.retry_after(error)) is not None:
        headers["Retry-After"] = str(retry_after)
    if isinstance(error, HTTPException):  # starlette's own: keep its status and headers
        status, error_type = error.status_code, "not_found" if error.status_code == 404 else "http"
        message, headers = str(error.detail), dict(error.headers or {})
        if status == 405:  # Starlette names the first route's methods only
            headers["Allow"] = ", ".join(allowed_methods(request))
    if isinstance(error, JobTimeout):
        details, message = _timeout_details(request, error)
    return error_response(status, error_type, message, headers, **details)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path."""
    methods: set[str] = set()
    for route in _leaf_routes(request.app.routes):
        match, _ = route.matches({**request.scope, "method": "OPTIONS"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _leaf_routes(routes: Any) -> Iterator[Any]:
    for route in routes:  # an included router (FastAPI's _IncludedRouter) holds its own routes
        nested = getattr(getattr(route, "original_router", route), "routes", None)
        yield from _leaf_routes(nested) if nested is not None else [route]


def _as_invalid(error: RequestValidationError) -> InvalidRequest:
    """The SDK's words where the schema's visible-text pattern refused a field (not pydantic's,
    which quote the whole pattern); pydantic's field and message for anything else."""
    errors = error.errors()
    first = errors[0] if errors else {}
    text, pattern = first.get("input"), first.get("ctx", {}).get("pattern")
    if pattern == visible_text_pattern() and isinstance(text, str) and (problem := invisible_text(text)):
        return InvalidRequest(field_path(first["loc"]), *problem)
    return invalid_request(errors, "body")


def _timeout_details(request: Request, error: JobTimeout) -> tuple[dict[str, Any], str]:
    status_url = str(request.url_for("get_job", job_id=error.job_id))
    details = {"job_id": error.job_id, "status": error.status, "status_url": status_url}
    return details, f"{error}; poll {status_url}"


def install_error_handlers(app: FastAPI) -> None:
    for kind in RULES:
        app.add_exception_handler(kind, handle)


def markdown_table() -> str:
    """The table in docs/gateway.md (tests/test_docs.py keeps the two equal)."""
    rows = ["| error | status | error_type | when |", "|---|---|---|---|"]
    rows += [
        f"| `{kind.__name__}` | {rule.status} | `{rule.error_type}` | {rule.when} |" for kind, rule in RULES.items()
    ]
    return "\n".join(rows)
