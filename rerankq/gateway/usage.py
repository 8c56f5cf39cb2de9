"""What each key used, counted where the gateway answers: Prometheus counters labelled by key name
(never the key), hourly totals in Redis for ``rerankq usage`` (rerankq.core.usage), and one audit
log line per request with the key's name and no key or text."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError
from starlette.types import Scope

from rerankq.core.constants import usage_key
from rerankq.core.usage import hour_of

log = logging.getLogger("rerankq.gateway")
audit_log = logging.getLogger("rerankq.audit")
DOCUMENTS_PER_SEARCH_UNIT = 100  # Cohere: one search unit is a query with up to 100 documents

KEY_COUNTERS = {
    "requests": Counter("rerankq_gateway_key_requests_total", "Requests by API key name", ["key"]),
    "documents": Counter("rerankq_gateway_key_documents_total", "Documents submitted, by API key name", ["key"]),
    "document_tokens": Counter(
        "rerankq_gateway_key_document_tokens_total",
        "Document tokens charged against the key's limits (estimated at admission), by API key name",
        ["key"],
    ),
    "search_units": Counter(
        "rerankq_gateway_key_search_units_total", "Search units billed (Cohere's rule), by API key name", ["key"]
    ),
    "jobs": Counter("rerankq_gateway_key_jobs_total", "Jobs enqueued, by API key name", ["key"]),
    "rate_limited": Counter(
        "rerankq_gateway_key_rate_limited_total", "Requests answered 429, by API key name", ["key"]
    ),
}


def search_units(documents: int) -> int:
    """Cohere's count: one per query of up to 100 documents."""
    return max(1, math.ceil(documents / DOCUMENTS_PER_SEARCH_UNIT))


@dataclass
class RequestUsage:
    """What one request used (set by the service once it admitted the job)."""

    documents: int = 0
    document_tokens: int = 0
    search_units: int = 0
    jobs: int = 0
    job_id: str | None = None

    def record_job(self, job_id: str, documents: int, document_tokens: int) -> None:
        """What an enqueued job bills; a request refused before its job was sent bills nothing."""
        self.job_id, self.jobs = job_id, 1
        self.documents, self.document_tokens, self.search_units = documents, document_tokens, search_units(documents)


class UsageLedger:
    def __init__(self, redis: aioredis.Redis, retention_days: int) -> None:
        self._redis = redis
        self._ttl_s = retention_days * 86_400

    async def record(self, key_name: str, usage: RequestUsage, status: int) -> None:
        """Count one answered request; Redis failing loses the count, never the answer."""
        counts = {
            "requests": 1,
            "documents": usage.documents,
            "document_tokens": usage.document_tokens,
            "search_units": usage.search_units,
            "jobs": usage.jobs,
            "rate_limited": int(status == 429),
        }
        for counter, count in counts.items():
            if count:
                KEY_COUNTERS[counter].labels(key_name).inc(count)
        hourly = usage_key(hour_of(time.time()))
        pipe = self._redis.pipeline(transaction=False)
        for counter, count in counts.items():
            if count:
                pipe.hincrby(hourly, f"{key_name}:{counter}", count)
        pipe.expire(hourly, self._ttl_s)
        try:
            await pipe.execute()
        except RedisError as e:
            log.warning("usage of key %r not counted in Redis: %s", key_name, e)


def audit(key_name: str, scope: Scope, status: int, usage: RequestUsage, seconds: float) -> None:
    """One line per request: who, which endpoint (its route template), the answer, what it used."""
    route = getattr(scope.get("route"), "path", None) or scope["path"]
    counted = {name: value for name, value in asdict(usage).items() if value}
    line = {"event": "request", "key": key_name, "method": scope["method"], "endpoint": route, "status": status}
    audit_log.info("%s", json.dumps({**line, **counted, "ms": round(seconds * 1000, 1)}))
