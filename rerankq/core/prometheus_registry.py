"""The Prometheus registry a process serves: its own, or, in prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set: several worker or gateway processes on one host), one that sums
every process's values. Shared by workers, the gateway and the exporter; needs prometheus-client
(the worker and gateway extras)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, multiprocess


def multiprocess_registry() -> CollectorRegistry | None:
    """A registry summing every process's values, when this host runs in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
