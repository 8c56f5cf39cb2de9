"""This worker's entry in the presence hash (see rerankq.producer.presence), kept fresh by a thread."""

from __future__ import annotations

import logging
import threading
import time

import redis

from rerankq.producer.constants import WORKERS_KEY
from rerankq.producer.presence import WorkerPresence
from rerankq.worker.runtime import Runtime

log = logging.getLogger("rerankq.worker")


class PresenceBeacon:
    """Announces the worker once it consumes; withdraws it as soon as shutdown begins, so
    gateways stop counting on it before its last jobs finish."""

    def __init__(self, runtime: Runtime, worker_id: str) -> None:
        self._runtime = runtime
        self.worker_id = worker_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rerankq-presence", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._runtime.redis.hdel(WORKERS_KEY, self.worker_id)
        except redis.RedisError as e:
            log.warning("could not withdraw worker presence: %s", e)

    def _run(self) -> None:
        interval = self._runtime.settings.presence_interval_s
        while not self._stop.is_set():
            try:
                self._runtime.redis.hset(WORKERS_KEY, self.worker_id, self._presence().to_json())
            except redis.RedisError as e:  # Redis away: retried next interval; Celery reconnects itself
                log.warning("could not refresh worker presence: %s", e)
            self._stop.wait(interval)

    def _presence(self) -> WorkerPresence:
        runtime = self._runtime
        return WorkerPresence(
            worker_id=self.worker_id,
            model=runtime.model_name,
            lanes=tuple(runtime.lanes),
            device=runtime.backend.device,
            identity=runtime.identity,
            seen_at=time.time(),
            held=runtime.held_by_lane(),
        )
