"""Bearer API keys. Settings hold keys or their SHA-256 digests (``sha256:<hex>``); the gateway
keeps only digests and compares the presented key's digest with each in constant time."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request
from pydantic import SecretStr

from rerankq.gateway.errors import Unauthorized

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


async def require_api_key(request: Request) -> None:
    """FastAPI dependency on every route except the health probes."""
    keys: ApiKeys = request.app.state.api_keys
    keys.check(request.headers.get("authorization"))
