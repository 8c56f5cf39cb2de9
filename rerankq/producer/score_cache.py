"""The result cache: one score per (model identity, score options, query, document) in Redis.

Producers read it before enqueueing (one MGET per job); workers read what is still missing
and write what they computed (one pipelined round trip each). A cache fault never fails a
rerank: it is logged, counted in ``faults``, and the request is served as if nothing were cached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import redis

from rerankq.core.constants import CACHE_STATS_KEY, SCORE_KEY_PREFIX, model_identity_key
from rerankq.core.contract import cache_key
from rerankq.core.redis_clients import connect
from rerankq.core.settings import Settings

log = logging.getLogger("rerankq.cache")
# redis-py types every reply as "Awaitable | Any" (shared with its asyncio client); the casts
# below state what the sync client returns.
T = TypeVar("T")


class ScoreCache:
    """Cached scores by document text, for one query and one model identity at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.cache_enabled
        self.ttl_s = settings.cache_ttl_s
        self.redis = connect(
            settings.effective_cache_url,
            settings.redis_sentinel_master,
            socket_timeout=settings.cache_timeout_s,
            socket_connect_timeout=settings.cache_timeout_s,
        )
        self.faults = 0
        self._identities: dict[str, tuple[float, str | None]] = {}

    def identity(self, model: str) -> str | None:
        """The identity of the weights serving ``model``, as its workers published it (memoised briefly)."""
        now = time.monotonic()
        read_at, identity = self._identities.get(model, (float("-inf"), None))
        if now - read_at > self.settings.identity_refresh_s:
            raw = self._guard("read model identity", lambda: self.redis.get(model_identity_key(model)), None)
            identity = raw.decode() if isinstance(raw, bytes) else None
            self._identities[model] = (now, identity)
        return identity

    def publish_identity(self, model: str, identity: str) -> None:
        self._guard("publish model identity", lambda: self.redis.set(model_identity_key(model), identity), None)

    def lookup(self, model: str, identity: str, options: str, query: str, documents: Iterable[str]) -> dict[str, float]:
        """Cached scores of the distinct ``documents``, by document text, in one round trip."""
        distinct = list(dict.fromkeys(documents))
        if not distinct:
            return {}
        keys = [cache_key(model, identity, options, query, doc) for doc in distinct]
        missing: list[bytes | None] = [None] * len(keys)
        values = self._guard("lookup", lambda: cast(list[bytes | None], self.redis.mget(keys)), missing)
        return {doc: float(value) for doc, value in zip(distinct, values, strict=True) if value is not None}

    def store(
        self, model: str, identity: str, options: str, query: str, scores: dict[str, float], hits: int = 0
    ) -> None:
        """Write computed scores with the TTL and count hits/misses, in one pipelined round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for doc, score in scores.items():
            pipe.set(cache_key(model, identity, options, query, doc), repr(score), ex=self.ttl_s)
        pipe.set(model_identity_key(model), identity)  # re-published: an evicting cache may drop it
        _count(pipe, hits, len(scores))
        self._guard("store", pipe.execute, None)

    def count_hits(self, hits: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        _count(pipe, hits, 0)
        self._guard("count hits", pipe.execute, None)

    def stats(self) -> dict[str, int]:
        """Hits, misses, cached pairs and memory of the cache Redis (raises if it is down)."""
        raw_counters = cast(dict[bytes, bytes], self.redis.hgetall(CACHE_STATS_KEY))
        counters = {k.decode(): int(v) for k, v in raw_counters.items()}
        keys = sum(1 for _ in self.redis.scan_iter(match=f"{SCORE_KEY_PREFIX}*", count=1000))
        memory = int(cast(dict[str, Any], self.redis.info("memory"))["used_memory"])
        return {"hits": counters.get("hits", 0), "misses": counters.get("misses", 0), "keys": keys, "memory": memory}

    def clear(self, model: str | None = None) -> int:
        """Delete cached scores (of one model, or all) and the counters; returns how many scores went."""
        pattern = f"{SCORE_KEY_PREFIX}{model}:*" if model else f"{SCORE_KEY_PREFIX}*"
        deleted = 0
        batch: list[bytes] = []
        for key in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) == 1000:
                deleted += cast(int, self.redis.unlink(*batch))
                batch = []
        if batch:
            deleted += cast(int, self.redis.unlink(*batch))
        if model is None:
            self.redis.delete(CACHE_STATS_KEY)
        return deleted

    def close(self) -> None:
        self.redis.close()

    def _guard(self, action: str, call: Callable[[], T], fallback: T) -> T:
        try:
            return call()
        except redis.RedisError as e:
            self.faults += 1
            log.warning("result cache %s failed (%s: %s); serving without it", action, type(e).__name__, e)
            return fallback


def _count(pipe: redis.client.Pipeline, hits: int, misses: int) -> None:
    if hits:
        pipe.hincrby(CACHE_STATS_KEY, "hits", hits)
    if misses:
        pipe.hincrby(CACHE_STATS_KEY, "misses", misses)
