"""``rerankq gateway``: check the bind is safe, then serve the app with uvicorn."""

from __future__ import annotations

import asyncio
import os
import tempfile

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from rerankq.core.listen import is_loopback
from rerankq.core.redis_clients import ping_redis
from rerankq.core.settings import get_settings
from rerankq.gateway.keys import load_ring


class UnsafeBind(Exception):
    pass


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head. uvicorn times out idle
    keep-alive connections but waits forever for a head that never completes, and a connection
    that sends nothing at all has no timer: 21,000 half-sent requests held the gateway's file
    descriptors. Here a connection must complete a request head within
    ``RERANKQ_GATEWAY_HEADER_TIMEOUT_S`` of connecting, or of the first byte of its next request."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests() and self._head_timer is None:
            self._arm()  # a new request has begun: its head must arrive in time
        super().data_received(data)
        if not self._between_requests():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(get_settings().gateway_header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expire(self) -> None:
        self._head_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()


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
    check_bind(host, load_ring(settings).enabled, insecure)  # a bad keys file: KeysFileError, one line
    # Redis down at start: one line from the CLI (BrokerUnavailable), not the app's start-up traceback
    ping_redis(settings, "starting the gateway")
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
        http=HeadTimeoutProtocol,
        log_level="info",
    )
