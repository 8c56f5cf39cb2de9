"""A snapshot of the fleet: live workers, and per model and lane the jobs waiting (in the broker)
and held (by workers).

What an autoscaler needs is the work not yet done: messages waiting in a lane (every kombu
priority sub-list of its queue, which Redis list-length scalers miss) plus jobs workers have
reserved and not finished (each worker reports those in its presence entry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import redis

from rerankq.core.aliases import AliasTarget, static_aliases, stored_aliases
from rerankq.core.broker import RabbitDepths
from rerankq.core.constants import (
    CACHE_STATS_KEY,
    KEY_PREFIX,
    KOMBU_PRIORITY_SEP,
    KOMBU_PRIORITY_STEPS,
    LANES,
    LANES_SEEN_KEY,
    queue_keys,
    queue_name,
)
from rerankq.core.live_workers import WorkerPresence, models_served_before, read_live, serving
from rerankq.core.redis_clients import connect
from rerankq.core.registry import load_manifests
from rerankq.core.settings import Settings


@dataclass(frozen=True)
class LaneState:
    model: str
    lane: str
    waiting: int  # messages in the broker
    held: int  # reserved by live workers, not finished
    workers: int  # live workers consuming the lane

    @property
    def depth(self) -> int:
        return self.waiting + self.held


@dataclass(frozen=True)
class Snapshot:
    workers: list[WorkerPresence]
    lanes: list[LaneState]
    cache_hits: int
    cache_misses: int
    aliases: dict[str, AliasTarget] = field(default_factory=dict)  # static and live, live winning

    @property
    def cache_hit_ratio(self) -> float | None:
        looked_up = self.cache_hits + self.cache_misses
        return self.cache_hits / looked_up if looked_up else None


def read_snapshot(
    client: redis.Redis,
    settings: Settings,
    cache: redis.Redis | None = None,
    scan_queues: bool = False,
    rabbit: RabbitDepths | None = None,
) -> Snapshot:
    """One snapshot: a presence read from Redis, the jobs waiting per lane from the broker (one
    pipelined LLEN per queue list on Redis; a passive declare per queue on RabbitMQ, ``rabbit``),
    the cache counters from the cache Redis (``cache``; default ``client``). Models are those of
    the manifests, of live workers and that workers served before; on Redis ``scan_queues`` adds
    every ``rerankq.<model>.<lane>`` queue found, so jobs sent to a name nobody ever served show
    up (a SCAN: ``rerankq status``, not the exporter's every scrape; plain AMQP cannot list a
    broker's queues)."""
    workers = read_live(client, settings.presence_interval_s)
    models = {*load_manifests(settings.models_dir), *(w.model for w in workers)}
    # names workers served before: their jobs may wait for the next one (an autoscaler at zero)
    models |= models_served_before(cast(list[bytes], client.hkeys(LANES_SEEN_KEY)))
    if scan_queues and rabbit is None:
        models |= queued_models(client)
    pairs = [(model, lane) for model in sorted(models) for lane in LANES]
    queues = [queue_name(model, lane) for model, lane in pairs]
    waiting = rabbit.waiting(queues) if rabbit is not None else redis_waiting(client, queues)
    counters = cast(dict[bytes, bytes], (cache or client).hgetall(CACHE_STATS_KEY))
    lanes = [
        LaneState(
            model,
            lane,
            waiting=waiting[i],
            held=sum(w.held.get(lane, 0) for w in workers if w.model == model),
            workers=len(serving(workers, model, lane)),
        )
        for i, (model, lane) in enumerate(pairs)
    ]
    stats = {k.decode(): int(v) for k, v in counters.items()}
    aliases = static_aliases(settings) | stored_aliases(client)
    return Snapshot(workers, lanes, stats.get("hits", 0), stats.get("misses", 0), aliases)


def read_snapshot_once(settings: Settings, scan_queues: bool = False) -> Snapshot:
    """One snapshot with clients of its own, closed afterwards (``rerankq status``; the exporter
    keeps its clients between scrapes)."""
    store = connect(settings.redis_url, settings.redis_sentinel_master, socket_timeout=5)
    cache = connect(settings.effective_cache_url, settings.redis_sentinel_master, socket_timeout=5)
    rabbit = RabbitDepths(settings) if settings.on_rabbitmq else None
    try:
        return read_snapshot(store, settings, cache, scan_queues=scan_queues, rabbit=rabbit)
    finally:
        if rabbit is not None:
            rabbit.close()
        store.close()
        cache.close()


def redis_waiting(client: redis.Redis, queues: list[str]) -> list[int]:
    """Messages waiting in each queue: the lengths of all its kombu priority lists."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
    lengths = pipe.execute()
    steps = len(KOMBU_PRIORITY_STEPS)
    return [sum(lengths[i * steps : (i + 1) * steps]) for i in range(len(queues))]


def queued_models(client: redis.Redis) -> set[str]:
    """The models of every non-empty rerankq queue list in Redis (``rerankq.<model>.<lane>``,
    with kombu's priority suffixes)."""
    models = set()
    for key in client.scan_iter(match=f"{KEY_PREFIX}.*", count=1000, _type="list"):
        name = key.decode(errors="replace").split(KOMBU_PRIORITY_SEP, 1)[0]
        model, _, lane = name.removeprefix(f"{KEY_PREFIX}.").rpartition(".")
        if model and lane in LANES:
            models.add(model)
    return models
