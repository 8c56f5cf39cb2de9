"""Waiting for many jobs' results on one pub/sub connection: the protocol, written once.

Celery's Redis backend stores each finished job's meta under its result key and publishes it
on a channel of the same name. A waiter subscribes to a job's channel *before* it first reads
the key (a result stored in between is never missed), takes final metas from messages as they
come, and reads every watched key with one MGET at least every ``POLL_S`` (a safety net: a
message lost across a reconnect, or never published, is noticed within a second).

``WatchedKeys`` is that protocol without I/O. The bulk lane's blocking ``ResultWatcher``
(producer.result_watcher) and the gateway's asyncio ``ResultWaiter`` (gateway.waiter) drive it with
their own connections; Celery's own ``ResultSet`` and ``AsyncResult.get`` park a thread per
job and trust the message alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rerankq.producer.job_handles import decode_meta, is_ready
from rerankq.producer.job_status import Meta


class WatchedKeys:
    """Which jobs are watched, under which result keys, and which of their metas are final."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._jobs: dict[str, str] = {}  # result key -> job id

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and self.key_of(job_id) in self._jobs

    def key_of(self, job_id: str) -> str:
        key: bytes = self._backend.get_key_for_task(job_id)
        return key.decode()

    def add(self, job_id: str) -> str:
        """Start watching; returns the key (the channel) to subscribe to before the first read."""
        key = self.key_of(job_id)
        self._jobs[key] = job_id
        return key

    def remove(self, job_ids: Iterable[str]) -> list[str]:
        """Stop watching; returns their keys (to unsubscribe)."""
        keys = [self.key_of(job_id) for job_id in job_ids]
        for key in keys:
            self._jobs.pop(key, None)
        return keys

    def keys(self) -> list[str]:
        return list(self._jobs)

    def job_ids(self) -> list[str]:
        return list(self._jobs.values())

    def from_message(self, message: dict[str, Any] | None) -> list[tuple[str, Meta]]:
        """A pub/sub message: the (job id, meta) it finishes, if any."""
        if message is None or message.get("type") != "message":
            return []
        key = _text(message["channel"])
        return self._final([(key, message["data"])])

    def from_values(self, keys: Sequence[str], values: Sequence[bytes | None]) -> list[tuple[str, Meta]]:
        """One MGET over ``keys``: every (job id, meta) that is final."""
        return self._final(zip(keys, values, strict=True))

    def _final(self, pairs: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, Meta]]:
        done = []
        for key, raw in pairs:
            meta = decode_meta(self._backend, raw)
            if key in self._jobs and is_ready(meta):
                done.append((self._jobs[key], meta))
        return done


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
