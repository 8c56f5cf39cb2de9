"""Wait for many jobs at once, in one thread, and take their results out of Redis (the bulk lane).

The protocol is ``producer.watched_keys``'s; this is its blocking driver. A result is deleted once read:
a long bulk run keeps only its jobs in flight in Redis, never its history. Celery's own
``ResultSet`` waits for a fixed set of jobs; a bulk run needs a sliding window.
"""

from __future__ import annotations

from celery import Celery

from rerankq.core.constants import cancel_key
from rerankq.core.contract import RerankResult
from rerankq.errors import JobFailed
from rerankq.producer.job_handles import POLL_S, outcome_of_meta
from rerankq.producer.job_status import Meta
from rerankq.producer.watched_keys import WatchedKeys

Outcome = RerankResult | JobFailed


class ResultWatcher:
    def __init__(self, app: Celery, poll_s: float = POLL_S) -> None:
        self._backend = app.backend
        self._redis = app.backend.client
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._poll_s = poll_s
        self._watched = WatchedKeys(self._backend)

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, job_id: str) -> None:
        self._pubsub.subscribe(self._watched.add(job_id))

    def finished(self, timeout: float | None = None) -> list[tuple[str, Outcome]]:
        """Wait up to ``timeout`` (default ``poll_s``) for a watched job to finish; return every
        finished one with its result or failure, and stop watching them."""
        if not self._watched:
            return []
        if self._pubsub.get_message(timeout=self._poll_s if timeout is None else timeout) is not None:
            while self._pubsub.get_message(timeout=0) is not None:  # one MGET serves a burst
                pass
        keys = self._watched.keys()
        final = self._watched.from_values(keys, self._redis.mget(keys))
        done = [(job_id, self._outcome(job_id, meta)) for job_id, meta in final]
        self._forget([job_id for job_id, _ in done])
        return done

    def _outcome(self, job_id: str, meta: Meta) -> Outcome:
        try:
            return outcome_of_meta(self._backend, job_id, meta)
        except JobFailed as e:
            return e

    def _forget(self, job_ids: list[str]) -> None:
        if keys := self._watched.remove(job_ids):
            self._pubsub.unsubscribe(*keys)
            self._redis.delete(*keys)

    def close(self, cancel_ttl_s: int) -> None:
        """Stop watching. Jobs still in flight are cancelled: a worker that has not started one
        skips it, so an interrupted run leaves no work behind (its re-run sends the records again)."""
        if pending := self._watched.job_ids():
            pipe = self._redis.pipeline(transaction=False)
            for job_id in pending:
                pipe.set(cancel_key(job_id), 1, ex=cancel_ttl_s)
            pipe.execute()
            self._watched.remove(pending)
        self._pubsub.close()
