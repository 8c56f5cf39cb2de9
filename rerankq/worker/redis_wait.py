"""A worker whose Redis does not answer (yet) waits for it, saying so and taking nothing, instead
of looking ready while it loops on connection errors."""

from __future__ import annotations

import logging
import time

from rerankq.core.redis_clients import ping_redis
from rerankq.core.settings import Settings
from rerankq.errors import BrokerUnavailable

log = logging.getLogger("rerankq.worker")
FIRST_RETRY_S, LONGEST_RETRY_S = 0.5, 5.0


def wait_for_redis(settings: Settings) -> None:
    """Return once Redis answers PING; until then log ``waiting for Redis at <url>: <reason>`` at
    each try (backing off to one every 5 s). Redis that answers with a refusal (a wrong password
    or database) is no reason to wait: its ``BrokerUnavailable`` is raised at once."""
    delay = FIRST_RETRY_S
    while True:
        try:
            ping_redis(settings, "starting the worker")
            return
        except BrokerUnavailable as e:
            if e.answered:
                raise
            log.warning("waiting for Redis at %s: %s", e.url, e.detail)
        time.sleep(delay)
        delay = min(delay * 2, LONGEST_RETRY_S)
