"""Per-key usage as Redis keeps it: one hash per UTC hour, ``"<key name>:<counter>" -> count``,
written by gateways (rerankq.gateway.usage) and summed by ``rerankq usage``. Hourly hashes expire
after ``RERANKQ_USAGE_RETENTION_DAYS``; a key name never holds a key."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import cast

import redis

from rerankq.core.constants import usage_key

COUNTERS = ("requests", "documents", "document_tokens", "search_units", "jobs", "rate_limited")
HOUR_S = 3600


def hour_of(at: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(at))


def hours_since(since_s: float, now: float | None = None) -> list[str]:
    """The UTC hours that overlap the last ``since_s`` seconds, oldest first."""
    now = time.time() if now is None else now
    first = int((now - since_s) // HOUR_S)
    return [hour_of(hour * HOUR_S) for hour in range(first, int(now // HOUR_S) + 1)]


def read_usage(client: redis.Redis, since_s: float) -> dict[str, dict[str, int]]:
    """Per key name, each counter summed over the hours of the last ``since_s`` seconds (whole
    hours: the first one counts from its start)."""
    pipe = client.pipeline(transaction=False)
    for hour in hours_since(since_s):
        pipe.hgetall(usage_key(hour))
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    for hourly in cast(list[dict[bytes, bytes]], pipe.execute()):
        for field, count in hourly.items():
            name, _, counter = field.decode().rpartition(":")
            if counter in COUNTERS:
                totals[name][counter] += int(count)
    return dict(sorted(totals.items()))
