"""Per-key limits, counted in Redis so that every gateway replica shares them.

Requests and document tokens are counted per key in fixed one-minute windows (the window of the
epoch minute, as GitHub's and most API gateways' limits are): one Lua script checks every limit a
request touches and charges them all, or none, so two replicas cannot both let the last request
of a window through. A refused request is not charged. Documents per request is a size limit,
not a rate: over it is 413, since waiting does not help.

Document tokens are estimated here, before any work (the gateway holds no tokenizer): UTF-8 bytes
/ 4 per document, at least 1, capped at the job's ``max_length`` (longer documents are cut to it, or
chunked and capped per chunk). That is how OpenAI's token limits work too: charged on an estimate
at admission, while the response reports the tokens the model really read (``usage``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from rerankq.core.constants import rate_key
from rerankq.core.contract import RerankJob
from rerankq.core.settings import Settings
from rerankq.errors import RequestTooLarge
from rerankq.gateway.keys import ApiKey

WINDOW_S = 60
BYTES_PER_TOKEN = 4

# KEYS: one counter per limit. ARGV: the window's TTL (ms), then a (cost, limit) pair per counter.
# Returns {0, count after, ...} when charged, {i, count now} when limit i would be passed.
CHARGE = """
local n = #KEYS
local counts = {}
for i = 1, n do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count + tonumber(ARGV[2 * i]) > tonumber(ARGV[2 * i + 1]) then
    return {i, count}
  end
  counts[i] = count
end
local after = {0}
for i = 1, n do
  after[i + 1] = redis.call('INCRBY', KEYS[i], ARGV[2 * i])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return after
"""


class RateLimited(Exception):
    """Over a per-minute limit (HTTP 429 with Retry-After and X-RateLimit-* headers)."""

    def __init__(self, key: str, limit_name: str, limit: int, reset_s: int) -> None:
        self.key = key
        self.limit_name = limit_name
        self.limit = limit
        self.reset_s = reset_s
        super().__init__(key, limit_name, limit, reset_s)

    def __str__(self) -> str:
        return f"key {self.key!r} is at its limit of {self.limit} {self.limit_name}; retry in {self.reset_s}s"

    def headers(self) -> dict[str, str]:
        return rate_headers(self.limit, 0, self.reset_s)


def rate_headers(limit: int, remaining: int, reset_s: int) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(remaining, 0)),
        "X-RateLimit-Reset": str(reset_s),  # seconds until the window ends (IETF RateLimit draft)
    }


def estimate_tokens(job: RerankJob, settings: Settings) -> int:
    """The document tokens a job will cost, before it is tokenized (see the module docstring)."""
    text = job.text
    cap = None if text.long_documents == "chunk" else text.max_tokens_per_doc or text.max_length or settings.max_length
    estimates = (max(1, math.ceil(len(doc.encode("utf-8", "replace")) / BYTES_PER_TOKEN)) for doc in job.documents)
    return sum(min(tokens, cap) if cap else tokens for tokens in estimates)


@dataclass(frozen=True)
class Charge:
    """What a request costs against its key's limits."""

    documents: int
    tokens: int


class RateLimiter:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._charge = redis.register_script(CHARGE)

    async def charge(self, key: ApiKey, cost: Charge) -> dict[str, str]:
        """Charge one request; the headers to answer with. RequestTooLarge or RateLimited when over."""
        limits = key.limits
        if limits.documents_per_request is not None and cost.documents > limits.documents_per_request:
            rule = f"at most {limits.documents_per_request} documents per request for key {key.name!r}"
            raise RequestTooLarge("documents", rule, f"got {cost.documents}")
        if limits.document_tokens_per_minute is not None and cost.tokens > limits.document_tokens_per_minute:
            rule = f"at most {limits.document_tokens_per_minute} document tokens a minute for key {key.name!r}"
            raise RequestTooLarge("documents", rule, f"got about {cost.tokens}")
        counted: list[tuple[str, int, int]] = []
        if limits.requests_per_minute is not None:
            counted.append(("requests", 1, limits.requests_per_minute))
        if limits.document_tokens_per_minute is not None:
            counted.append(("document tokens", cost.tokens, limits.document_tokens_per_minute))
        if not counted:
            return {}
        window = int(time.time() // WINDOW_S)
        reset_s = max(1, (window + 1) * WINDOW_S - int(time.time()))
        keys = [rate_key(key.name, what.replace(" ", "_"), window) for what, _, _ in counted]
        args = [WINDOW_S * 2000] + [value for _, amount, limit in counted for value in (amount, limit)]
        answer = [int(value) for value in await self._charge(keys=keys, args=args)]
        if answer[0] != 0:
            what, _, limit = counted[answer[0] - 1]
            raise RateLimited(key.name, f"{what} a minute", limit, reset_s)
        what, _, limit = counted[0]
        return rate_headers(limit, limit - answer[1], reset_s)
