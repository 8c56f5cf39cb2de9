"""Which workers are alive, and what they serve: one Redis hash every worker refreshes.

Celery can answer this too (``inspect().active_queues()``), but only by a broadcast that waits
out a timeout, too slow for a gateway checking every request and for a readiness probe. Each
worker instead rewrites its entry every ``presence_interval_s``; readers treat an entry older
than three intervals as a dead worker and prune it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

STALE_AFTER_INTERVALS = 3


@dataclass(frozen=True)
class WorkerPresence:
    worker_id: str  # Celery hostname
    model: str
    lanes: tuple[str, ...]
    device: str
    identity: str
    seen_at: float  # unix time of the last refresh
    held: dict[str, int] = field(default_factory=dict)  # jobs reserved and unfinished, by lane

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerPresence | None:
        try:
            data: dict[str, Any] = json.loads(raw)
            return cls(**{**data, "lanes": tuple(data["lanes"])})
        except (ValueError, TypeError, KeyError):
            return None  # a foreign or half-written entry: not a worker we can route to


def live_presences(
    raw_entries: dict[Any, Any], interval_s: float, now: float | None = None
) -> tuple[list[WorkerPresence], list[Any]]:
    """Split the hash's entries into live workers and the fields of stale (or unreadable) ones."""
    cutoff = (now if now is not None else time.time()) - interval_s * STALE_AFTER_INTERVALS
    live, stale = [], []
    for key, raw in raw_entries.items():
        presence = WorkerPresence.from_json(raw)
        if presence is None or presence.seen_at < cutoff:
            stale.append(key)
        else:
            live.append(presence)
    return live, stale


def serving(presences: list[WorkerPresence], model: str, lane: str) -> list[WorkerPresence]:
    return [p for p in presences if p.model == model and lane in p.lanes]
