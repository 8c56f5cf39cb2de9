"""``rerankq status``: the fleet at a glance in the terminal (or as JSON)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from rerankq.cli.redis_snapshot import Snapshot, read_snapshot_once
from rerankq.core.contract import backend_of
from rerankq.core.live_workers import WorkerPresence
from rerankq.core.settings import Settings


def print_status(settings: Settings, as_json: bool) -> None:
    fleet = read_snapshot_once(settings, scan_queues=True)
    if as_json:
        print(json.dumps(_as_dict(fleet)))
        return
    console = Console()
    console.print(_workers_table(fleet))
    console.print(_lanes_table(fleet))
    if fleet.aliases:
        console.print(_aliases_table(fleet))
    ratio = fleet.cache_hit_ratio
    console.print(
        f"cache: {fleet.cache_hits} hits, {fleet.cache_misses} misses"
        + (f", hit ratio {ratio:.1%}" if ratio is not None else "")
    )


def _workers_table(fleet: Snapshot) -> Table:
    table = Table("worker", "model", "device", "lanes", "held", "last seen", title="workers")
    now = time.time()
    for worker in sorted(fleet.workers, key=lambda w: (w.model, w.worker_id)):
        held = ", ".join(f"{lane} {n}" for lane, n in worker.held.items()) or "0"
        table.add_row(
            worker.worker_id,
            worker.model,
            _device(worker),
            ",".join(worker.lanes),
            held,
            f"{now - worker.seen_at:.0f}s ago",
        )
    return table


def _device(worker: WorkerPresence) -> str:
    """``cpu``, or ``cpu (onnx-int8)`` for a worker whose forward passes are not torch's."""
    backend = backend_of(worker.identity)
    return worker.device if backend == "torch" else f"{worker.device} ({backend})"


def _lanes_table(fleet: Snapshot) -> Table:
    """Every lane with a worker or with jobs, the queues of names no worker or manifest knows included."""
    table = Table("model", "lane", "workers", "waiting", "held", "depth", title="queues")
    for lane in fleet.lanes:
        if lane.workers or lane.depth:
            table.add_row(lane.model, lane.lane, str(lane.workers), str(lane.waiting), str(lane.held), str(lane.depth))
    return table


def _aliases_table(fleet: Snapshot) -> Table:
    table = Table("alias", "routes to", title="aliases")
    for alias, target in sorted(fleet.aliases.items()):
        table.add_row(alias, target.describe())
    return table


def _as_dict(fleet: Snapshot) -> dict[str, object]:
    return {
        "workers": [asdict(worker) for worker in fleet.workers],
        "lanes": [asdict(lane) | {"depth": lane.depth} for lane in fleet.lanes],
        "cache": {"hits": fleet.cache_hits, "misses": fleet.cache_misses, "hit_ratio": fleet.cache_hit_ratio},
        "aliases": {alias: target.shares() for alias, target in fleet.aliases.items()},
    }
