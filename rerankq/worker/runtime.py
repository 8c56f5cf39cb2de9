"""The one model this worker process serves, loaded before Celery starts consuming."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from rerankq.core.constants import Lane
from rerankq.core.contract import revision_of
from rerankq.core.registry import ModelManifest
from rerankq.core.settings import Settings
from rerankq.producer.score_cache import ScoreCache
from rerankq.worker import metrics
from rerankq.worker.backends import Backend
from rerankq.worker.batcher import Batcher


@dataclass
class Runtime:
    manifest: ModelManifest
    backend: Backend
    batcher: Batcher
    settings: Settings
    redis: redis.Redis
    cache: ScoreCache
    identity: str  # what the result cache keys on: weights fingerprint + score-changing settings
    lanes: tuple[Lane, ...] = ("interactive",)
    cpu_reroutes: int = field(default=0)
    held: Counter[str] = field(default_factory=Counter)  # jobs in hand by lane (presence reports it)
    _held_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model_name(self) -> str:
        return self.manifest.name

    @property
    def revision(self) -> str | None:
        return revision_of(self.identity)

    @contextmanager
    def holding(self, lane: str) -> Iterator[None]:
        """Count a job as held (reserved, unfinished) for autoscalers while it runs."""
        gauge = metrics.HELD.labels(self.model_name, lane)
        with self._held_lock:
            self.held[lane] += 1
        gauge.inc()
        try:
            yield
        finally:
            with self._held_lock:
                self.held[lane] -= 1
            gauge.dec()

    def held_by_lane(self) -> dict[str, int]:
        with self._held_lock:
            return {lane: count for lane, count in self.held.items() if count}


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("no model loaded in this process; start workers with `rerankq worker`")
    return _current
