"""``rerankq gateway``: check the bind is safe, then serve the app with uvicorn."""

from __future__ import annotations

import os
import tempfile

import uvicorn

from rerankq.listen import is_loopback
from rerankq.producer.settings import get_settings


class UnsafeBind(Exception):
    pass


def check_bind(host: str, have_keys: bool, insecure: bool) -> None:
    """Without API keys anyone who reaches the port may rerank: allow that on loopback only,
    unless the operator says ``--insecure`` (e.g. behind an authenticating proxy)."""
    if not have_keys and not insecure and not is_loopback(host):
        raise UnsafeBind(
            f"refusing to listen on {host} without API keys: set RERANKQ_API_KEYS, "
            "bind to 127.0.0.1, or pass --insecure if something in front authenticates"
        )


def serve(host: str, port: int, insecure: bool, workers: int = 1) -> None:
    settings = get_settings()
    check_bind(host, bool(settings.api_keys), insecure)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # several processes answer /metrics in turn: share one folder so each serves the sum
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rerankq-gateway-metrics-")
    uvicorn.run(
        "rerankq.gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        timeout_keep_alive=settings.gateway_keep_alive_s,
        log_level="info",
    )
