"""Bearer API keys. Settings hold keys or their SHA-256 digests (``sha256:<hex>``); the gateway
keeps only digests and compares the presented key's digest with each in constant time.

The check is an ASGI middleware in front of everything else, so an unauthenticated request is
answered 401 from its headers alone: its body is never read, parsed or validated (a route
dependency would run only after FastAPI parsed the body, letting anyone make the gateway parse
32 MiB)."""

from __future__ import annotations

import hashlib
import hmac

from fastapi.security import HTTPBearer
from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from rerankq.gateway.errors import Unauthorized, error_response

DIGEST_PREFIX = "sha256:"


def digest_of(configured: str) -> bytes:
    if configured.startswith(DIGEST_PREFIX):
        digest = bytes.fromhex(configured.removeprefix(DIGEST_PREFIX))
        if len(digest) != hashlib.sha256().digest_size:
            raise ValueError("an API key digest must be 64 hex digits after 'sha256:'")
        return digest
    return hashlib.sha256(configured.encode()).digest()


class ApiKeys:
    def __init__(self, keys: list[SecretStr]) -> None:
        self._digests = [digest_of(key.get_secret_value()) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        matched = False
        for known in self._digests:  # no early exit: the time taken does not reveal which key matched
            matched |= hmac.compare_digest(known, digest)
        return matched

    def check(self, authorization: str | None) -> None:
        if not self.enabled:
            return
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not self.accepts(presented.strip()):
            raise Unauthorized()


# Declares the scheme in the OpenAPI document; the check itself is AuthGate's.
bearer = HTTPBearer(auto_error=False, description="An API key from RERANKQ_API_KEYS")


class AuthGate:
    """401 before anything reads the body, for every path but the open ones."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, open_paths: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths and self.keys.enabled:
            try:
                self.keys.check(Headers(scope=scope).get("authorization"))
            except Unauthorized as e:
                headers = {"WWW-Authenticate": "Bearer"}
                await error_response(401, "unauthorized", str(e), headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
