"""Who is calling, what they may do, and one account of each request.

``AuthGate`` is an ASGI middleware in front of everything else, so an unauthenticated request is
answered 401 from its headers alone, and a key without the endpoint's scope 403: its body is never
read, parsed or validated (a route dependency would run only after FastAPI parsed the body, letting
anyone make the gateway parse 32 MiB). An admitted request carries a ``Caller`` (its key and what
it used) to the routes; when the answer is sent, the gate adds the key's rate-limit headers, counts
the request against the key (``rerankq.gateway.usage``) and writes its audit line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.security import HTTPBearer
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerankq.gateway.errors import Forbidden, Unauthorized, error_response
from rerankq.gateway.keys import ANONYMOUS_KEY, ApiKey, KeyRingHolder
from rerankq.gateway.usage import RequestUsage, UsageLedger, audit

# The scope each endpoint needs; any other path needs only a valid key (it answers 404 anyway).
SCOPE_OF_PATH = {"/v1/rerank": "rerank", "/v2/rerank": "rerank", "/rerank": "rerank", "/v1/models": "admin"}
JOBS_PATH = "/v1/jobs"


def scope_for(path: str, metrics_public: bool) -> str | None:
    if path == JOBS_PATH or path.startswith(JOBS_PATH + "/"):
        return "jobs"
    if path == "/metrics":
        return None if metrics_public else "admin"
    return SCOPE_OF_PATH.get(path)


@dataclass
class Caller:
    """The request's key, what it used, and the headers its limits add to the answer."""

    key: ApiKey
    usage: RequestUsage = field(default_factory=RequestUsage)
    headers: dict[str, str] = field(default_factory=dict)


def caller_of(request: Request) -> Caller:
    caller: Caller = request.scope["state"]["caller"]
    return caller


# Declares the scheme in the OpenAPI document; the check itself is AuthGate's.
bearer = HTTPBearer(auto_error=False, description="An API key (RERANKQ_API_KEYS or the keys file)")


class AuthGate:
    """401 or 403 before anything reads the body, for every path but the open ones."""

    def __init__(
        self, app: ASGIApp, keys: KeyRingHolder, open_paths: frozenset[str], usage: UsageLedger, metrics_public: bool
    ) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths
        self.usage = usage
        self.metrics_public = metrics_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            caller = Caller(self._identify(scope))
        except (Unauthorized, Forbidden) as e:
            await self._refuse(scope, receive, send, e)
            return
        scope.setdefault("state", {})["caller"] = caller
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).update(caller.headers)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            await self.usage.record(caller.key.name, caller.usage, status)
            audit(caller.key.name, scope, status, caller.usage, time.perf_counter() - started)

    def _identify(self, scope: Scope) -> ApiKey:
        ring = self.keys.ring
        if not ring.enabled:
            return ANONYMOUS_KEY
        scheme, _, presented = (Headers(scope=scope).get("authorization") or "").partition(" ")
        key = ring.identify(presented.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            raise Unauthorized()
        needed = scope_for(scope["path"], self.metrics_public)
        if needed is not None and not key.may(needed):
            raise Forbidden(key.name, needed)
        return key

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: Unauthorized | Forbidden) -> None:
        if isinstance(error, Unauthorized):
            response = error_response(401, "unauthorized", str(error), {"WWW-Authenticate": "Bearer"})
            name = "-"
        else:
            response = error_response(403, "forbidden", str(error), scope=error.scope)
            name = error.key
        await response(scope, receive, send)
        audit(name, scope, response.status_code, RequestUsage(), 0.0)
