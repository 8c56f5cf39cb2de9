"""Wait for many jobs at once, in one thread, and take their results out of Redis.

Celery's Redis backend publishes each finished job's meta on a channel named after the job's
result key. The watcher subscribes to every watched job's channel on one pub/sub connection and
reads the keys it watches with one MGET whenever a message arrives (and at least every
``poll_s``, a safety net against a lost message). Subscribing before the first read means a
result stored in between is never missed. A result is deleted once read: a long bulk run keeps
only its jobs in flight in Redis, never its history.

Celery's own ``ResultSet`` waits for a fixed set of jobs; a bulk run needs a sliding window.
"""

from __future__ import annotations

from celery import Celery

from rerankq.errors import JobFailed
from rerankq.producer.constants import cancel_key
from rerankq.producer.contract import RerankResult
from rerankq.producer.jobs import POLL_S, decode_meta, is_ready, outcome_of_meta

Outcome = RerankResult | JobFailed


class ResultWatcher:
    def __init__(self, app: Celery, poll_s: float = POLL_S) -> None:
        self._backend = app.backend
        self._redis = app.backend.client
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._poll_s = poll_s
        self._keys: dict[str, bytes] = {}  # job id -> result key

    def __len__(self) -> int:
        return len(self._keys)

    def watch(self, job_id: str) -> None:
        key: bytes = self._backend.get_key_for_task(job_id)
        self._pubsub.subscribe(key)
        self._keys[job_id] = key

    def finished(self, timeout: float | None = None) -> list[tuple[str, Outcome]]:
        """Wait up to ``timeout`` (default ``poll_s``) for a watched job to finish; return every
        finished one with its result or failure, and stop watching them."""
        if not self._keys:
            return []
        if self._pubsub.get_message(timeout=self._poll_s if timeout is None else timeout) is not None:
            while self._pubsub.get_message(timeout=0) is not None:  # one MGET serves a burst
                pass
        ids = list(self._keys)
        raws = self._redis.mget([self._keys[job_id] for job_id in ids])
        done = []
        for job_id, raw in zip(ids, raws, strict=True):
            if raw and (outcome := self._outcome(job_id, raw)) is not None:
                done.append((job_id, outcome))
        self._forget([job_id for job_id, _ in done])
        return done

    def _outcome(self, job_id: str, raw: bytes) -> Outcome | None:
        meta = decode_meta(self._backend, raw)
        if not is_ready(meta):
            return None
        try:
            return outcome_of_meta(self._backend, job_id, meta)
        except JobFailed as e:
            return e

    def _forget(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        keys = [self._keys.pop(job_id) for job_id in job_ids]
        self._pubsub.unsubscribe(*keys)
        self._redis.delete(*keys)

    def close(self, cancel_ttl_s: int) -> None:
        """Stop watching. Jobs still in flight are cancelled: a worker that has not started one
        skips it, so an interrupted run leaves no work behind (its re-run sends the records again)."""
        if self._keys:
            pipe = self._redis.pipeline(transaction=False)
            for job_id in self._keys:
                pipe.set(cancel_key(job_id), 1, ex=cancel_ttl_s)
            pipe.execute()
        self._keys.clear()
        self._pubsub.close()
