"""The one model this worker process serves, loaded before Celery starts consuming."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from producer.cache import ScoreCache
from producer.constants import Lane
from producer.registry import ModelManifest
from producer.settings import Settings
from worker.backends import Backend
from worker.batcher import Batcher


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

    @property
    def model_name(self) -> str:
        return self.manifest.name


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("no model loaded in this process; start workers with `rerankq worker`")
    return _current
