"""kombu's Redis transport, made to survive messages it cannot read.

kombu decodes every message it pops with ``json.loads`` and lets the error escape, and Celery
calls that unrecoverable: one garbage ``LPUSH`` on a rerankq queue would stop every worker that
consumes it. kombu has no hook for undecodable messages, so the one method that pops and decodes
is wrapped here: the message (already popped) is recorded as rejected with the reason, and the
worker goes on serving. The worker's Celery app selects these classes (``broker_transport``);
producers never consume, so they keep kombu's own.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

from rerankq.worker.rejections import record_rejection

# What a message that is not a kombu envelope raises on its way in (json.loads, then the
# envelope's fields read by kombu's _deliver).
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)


class _SafeRead:
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        except UNREADABLE as e:
            record_rejection("unreadable", f"not a kombu JSON message ({type(e).__name__}: {e})")
            return True  # consumed (it was popped), so the poller goes on


class Channel(_SafeRead, kombu_redis.Channel):  # type: ignore[misc]
    pass


class SentinelChannel(_SafeRead, kombu_redis.SentinelChannel):  # type: ignore[misc]
    pass


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


def transport_for(broker_url: str) -> str:
    """The class path of the safe transport for a broker URL's scheme."""
    scheme = broker_url.split("://", 1)[0]
    return f"{__name__}:{'SentinelTransport' if scheme == 'sentinel' else 'Transport'}"
