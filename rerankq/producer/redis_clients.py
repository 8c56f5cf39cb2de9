"""Redis clients for rerankq's own reads and writes (cache, aliases, presence, ledger), from the
same URLs Celery and kombu take: ``redis://``, ``rediss://`` (TLS) or ``sentinel://``.

redis-py's ``from_url`` does not read kombu's Sentinel form
(``sentinel://[:password@]host:26379;sentinel://host2:26379/0``, master name in settings), so it
is parsed here and handed to redis-py's ``Sentinel``, which finds the current primary on every
reconnect: a failover needs no restart.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel://"


def masked_url(url: str) -> str:
    """The URL with any password replaced by ``****``, fit for messages and logs."""
    parts = []
    for part in url.split(";"):
        parsed = urlsplit(part)
        if parsed.password:
            netloc = parsed.netloc.replace(f":{parsed.password}@", ":****@", 1)
            part = parsed._replace(netloc=netloc).geturl()
        parts.append(part)
    return ";".join(parts)


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """The sentinels' addresses, the database number and the primary's password."""
    nodes: list[tuple[str, int]] = []
    db, password = 0, None
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        nodes.append((parsed.hostname or "localhost", parsed.port or 26379))
        password = parsed.password or password
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    return nodes, db, password


def connect(url: str, master: str, **options: Any) -> redis.Redis:
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    nodes, db, password = sentinel_parts(url)
    sentinel = Sentinel(nodes)  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel untyped
    primary = sentinel.master_for(master, db=db, password=password, **options)  # type: ignore[no-untyped-call]
    return cast(redis.Redis, primary)


def connect_async(url: str, master: str, **options: Any) -> aioredis.Redis:
    if not is_sentinel(url):
        return cast(aioredis.Redis, aioredis.Redis.from_url(url, **options))
    nodes, db, password = sentinel_parts(url)
    sentinel = AsyncSentinel(nodes)  # type: ignore[no-untyped-call]
    return cast(aioredis.Redis, sentinel.master_for(master, db=db, password=password, **options))
