"""This worker's heartbeat and presence entry (see rerankq.core.live_workers), kept fresh by a thread.

Two signals, with two lifetimes. The heartbeat (``rerankq:heartbeats``) says the process lives: it
beats from before the worker takes its first job until the process ends, draining included, and
sweepers give a worker's jobs back only when it stops (rerankq.worker.recovery). The presence
entry says the worker takes new jobs: it is announced once the worker consumes and withdrawn as
soon as shutdown begins, so gateways stop counting on it before its last jobs finish. The thread
touches nothing but Redis and a counter (never the model or the batcher), so a long forward pass
never stops the beat.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps

from rerankq.core.constants import HEARTBEATS_KEY, LANES_SEEN_KEY, WORKERS_KEY, queue_name
from rerankq.core.live_workers import WorkerPresence
from rerankq.worker.runtime import Runtime

log = logging.getLogger("rerankq.worker")


class PresenceBeacon:
    def __init__(self, runtime: Runtime, worker_id: str) -> None:
        self._runtime = runtime
        self.worker_id = worker_id
        self._serving = threading.Event()
        self._writing = threading.Lock()  # a withdrawal is never undone by a beat in flight
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rerankq-presence", daemon=True)

    def start(self) -> None:
        """Start beating (before the first job is taken)."""
        self._thread.start()

    def serve(self) -> None:
        """Announce the worker as taking jobs (once Celery consumes)."""
        self._serving.set()
        self._beat()

    def withdraw(self) -> None:
        """Stop being counted on for new jobs (shutdown began); the heartbeat goes on."""
        with self._writing:
            self._serving.clear()
            self._forget(WORKERS_KEY)

    def stop(self) -> None:
        """The process ends: no presence, no heartbeat."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.withdraw()
        self._forget(HEARTBEATS_KEY)

    def _run(self) -> None:
        interval = self._runtime.settings.presence_interval_s
        while not self._stop.is_set():
            self._beat()
            self._stop.wait(interval)

    def _beat(self) -> None:
        try:
            with self._writing:
                self._write()
        except redis.RedisError as e:  # Redis away: retried next interval; Celery reconnects itself
            log.warning("could not refresh worker presence: %s", e)

    def _write(self) -> None:
        now = time.time()
        pipe = self._runtime.redis.pipeline(transaction=False)
        pipe.hset(HEARTBEATS_KEY, self.worker_id, str(now))
        if self._serving.is_set():
            presence = self._presence(now)
            pipe.hset(WORKERS_KEY, self.worker_id, presence.to_json())
            seen = {queue_name(presence.model, lane): now for lane in self._runtime.lanes}
            pipe.hset(LANES_SEEN_KEY, mapping=seen)
        pipe.execute()

    def _forget(self, key: str) -> None:
        try:
            self._runtime.redis.hdel(key, self.worker_id)
        except redis.RedisError as e:
            log.warning("could not withdraw worker presence: %s", e)

    def _presence(self, now: float) -> WorkerPresence:
        runtime = self._runtime
        return WorkerPresence(
            worker_id=self.worker_id,
            model=runtime.model_name,
            lanes=tuple(runtime.lanes),
            device=runtime.backend.device,
            identity=runtime.identity,
            seen_at=now,
            held=runtime.held_by_lane(),
        )


def presence_step(beacon: PresenceBeacon) -> type[bootsteps.StartStopStep]:
    """A bootstep of Celery's consumer (its documented extension point): the worker is announced
    once the consumer consumes its queues, and withdrawn the moment the consumer stops for any
    reason (shutdown, a lost connection, an error Celery cannot recover from), so producers'
    fail-fast (``NoWorkers``) never counts on a worker that takes nothing."""

    class Presence(bootsteps.StartStopStep):  # type: ignore[misc]
        # Announced on the event loop's first turn, after the remote-control step: Celery orders
        # steps with equal requirements arbitrarily (hash order), and a control command sent to a
        # worker that is announced before its control queue listens (on Redis: before the loop
        # subscribes) is lost, never answered
        requires = ("celery.worker.consumer.control:Control",)
        entry: Any = None

        def start(self, consumer: Any) -> None:
            self.entry = consumer.timer.call_after(0, beacon.serve)

        def stop(self, consumer: Any) -> None:
            if self.entry is not None:
                self.entry.cancel()
                self.entry = None
            beacon.withdraw()

        def shutdown(self, consumer: Any) -> None:
            self.stop(consumer)

        def terminate(self, consumer: Any) -> None:
            self.stop(consumer)

    return Presence
