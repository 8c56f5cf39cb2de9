"""``rerankq exporter``: the fleet's queue depths for autoscalers (KEDA) and dashboards, and, in
multiprocess mode, the summed metrics of every worker process on this host. It also sweeps for
dead workers' jobs (rerankq.worker.recovery), so they come back even when no worker is left."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rerankq.cli.redis_snapshot import read_snapshot
from rerankq.core.broker import RabbitDepths
from rerankq.core.prometheus_registry import multiprocess_registry
from rerankq.core.redis_clients import connect
from rerankq.core.settings import Settings
from rerankq.errors import BrokerUnavailable
from rerankq.worker.private_hooks import require_supported_libraries
from rerankq.worker.recovery import Sweeper

log = logging.getLogger("rerankq.cli.exporter")
LANE = ["model", "lane"]


class FleetCollector(Collector):
    """Reads Redis at every scrape (a few pipelined commands), so the numbers are never stale."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = connect(settings.redis_url, settings.redis_sentinel_master, socket_timeout=5)
        self.cache = connect(settings.effective_cache_url, settings.redis_sentinel_master, socket_timeout=5)
        self.rabbit = RabbitDepths(settings) if settings.on_rabbitmq else None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("rerankq_redis_up", "Whether Redis and the broker answered this scrape")
        try:
            fleet = read_snapshot(self.store, self.settings, self.cache, rabbit=self.rabbit)
        except (redis.RedisError, BrokerUnavailable) as e:
            log.warning("cannot read the fleet's state: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        families = {
            "waiting": GaugeMetricFamily("rerankq_queue_waiting", "Jobs waiting in Redis", labels=LANE),
            "held": GaugeMetricFamily("rerankq_queue_held", "Jobs reserved by live workers, unfinished", labels=LANE),
            "depth": GaugeMetricFamily(
                "rerankq_queue_depth", "Work not done: waiting + held (scale workers on this)", labels=LANE
            ),
            "workers": GaugeMetricFamily("rerankq_lane_workers", "Live workers consuming the lane", labels=LANE),
        }
        for lane in fleet.lanes:
            labels = [lane.model, lane.lane]
            families["waiting"].add_metric(labels, lane.waiting)
            families["held"].add_metric(labels, lane.held)
            families["depth"].add_metric(labels, lane.depth)
            families["workers"].add_metric(labels, lane.workers)
        yield from families.values()
        cache = CounterMetricFamily("rerankq_cache_lookups", "Result-cache look-ups by producers", labels=["result"])
        cache.add_metric(["hit"], fleet.cache_hits)
        cache.add_metric(["miss"], fleet.cache_misses)
        yield cache
        shares = GaugeMetricFamily(
            "rerankq_alias_share", "Percent of an alias's jobs routed to a model version", labels=["alias", "model"]
        )
        for alias, target in sorted(fleet.aliases.items()):
            for model, share in target.shares().items():
                shares.add_metric([alias, model], share)
        yield shares


def serve_exporter(settings: Settings, port: int, host: str = "127.0.0.1") -> None:
    require_supported_libraries()  # its sweeps put messages back in kombu's layout
    registry = multiprocess_registry() or CollectorRegistry()
    collector = FleetCollector(settings)
    registry.register(collector)
    if not settings.on_rabbitmq:  # RabbitMQ gives a dead worker's jobs back itself
        Sweeper(collector.store, settings).start()
    start_http_server(port, addr=host, registry=registry)
    log.info("exporter on http://%s:%d/metrics", host, port)
    while True:
        time.sleep(3600)
