"""Redis clients for rerankq's own reads and writes (cache, aliases, presence, ledger), from the
same URLs Celery and kombu take: ``redis://``, ``rediss://`` (TLS) or ``sentinel://``.

redis-py's ``from_url`` does not read kombu's Sentinel form
(``sentinel://[:password@]host:26379;sentinel://host2:26379/0``, master name in settings), so it
is parsed here and handed to redis-py's ``Sentinel``, which finds the current primary on every
reconnect: a failover needs no restart. Redis errors become ``BrokerUnavailable`` here, naming
what was being done and the URL with its password masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import kombu.exceptions
import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from rerankq.core.settings import Settings
from rerankq.errors import BrokerUnavailable

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


@contextmanager
def broker_errors(action: str, url: str) -> Iterator[None]:
    """Redis errors (raw, or wrapped by kombu) surface as ``BrokerUnavailable`` naming the action,
    the URL (password masked) and what Redis answered, if it answered."""
    try:
        yield
    except (redis.RedisError, kombu.exceptions.OperationalError) as e:
        raise broker_unavailable(e, action, url) from e


def broker_unavailable(error: BaseException, action: str, url: str) -> BrokerUnavailable:
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, redis.RedisError):
        cause = cause.__cause__ or cause.__context__
    answered = isinstance(cause, redis.ResponseError | redis.AuthenticationError)
    return BrokerUnavailable(action, str(cause or error), masked_url(url), answered)


def ping_redis(settings: Settings, action: str) -> None:
    """PING the broker Redis once; ``BrokerUnavailable`` naming ``action`` when it cannot be used."""
    client = connect(settings.redis_url, settings.redis_sentinel_master, socket_connect_timeout=2, socket_timeout=5)
    try:
        with broker_errors(action, settings.redis_url):
            client.ping()
    finally:
        client.close()
