"""Pub/sub connections for blocking waiters, one per thread, kept from one wait to the next.

redis-py's ``PubSub`` closes its connection when it is reset (its context manager's exit) and
gives it back to the client's pool disconnected: the next command on that pool connects again
(a TCP handshake plus redis-py's ``CLIENT SETINFO`` round trips) before it runs. A producer
waiting for one job after another paid that on every job. Here each thread keeps one ``PubSub``,
subscribes to a job's channel for its wait and unsubscribes after, so its connection stays open.
A ``PubSub`` is not safe to share between threads, hence one per thread; a message for a channel
left behind can still arrive, so waiters read only their own channel's messages.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis


class ThreadSubscriptions:
    def __init__(self, client: Any) -> None:  # a redis.Redis (Celery's result backend client)
        self._client = client
        self._local = threading.local()
        self._opened: list[Any] = []  # every thread's, closed with the client
        self._lock = threading.Lock()

    @contextmanager
    def subscribed(self, channel: bytes | str) -> Iterator[Any]:
        """This thread's ``PubSub``, subscribed to ``channel`` inside the block."""
        pubsub = self._own()
        pubsub.subscribe(channel)
        try:
            yield pubsub
        finally:
            self._leave(pubsub, channel)

    def _own(self) -> Any:
        pubsub = getattr(self._local, "pubsub", None)
        if pubsub is None:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            self._local.pubsub = pubsub
            with self._lock:
                self._opened.append(pubsub)
        return pubsub

    def _leave(self, pubsub: Any, channel: bytes | str) -> None:
        try:
            pubsub.unsubscribe(channel)
        except redis.RedisError:  # a broken connection: this thread opens a fresh one next time
            self._local.pubsub = None
            self._forget(pubsub)

    def _forget(self, pubsub: Any) -> None:
        with self._lock:
            if pubsub in self._opened:
                self._opened.remove(pubsub)
        pubsub.close()

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for pubsub in opened:
            pubsub.close()


def for_channel(message: dict[str, Any] | None, channel: bytes | str) -> bytes | None:
    """A message's data when it was published on ``channel`` (else None: another wait's late one)."""
    if message is None or message.get("type") != "message":
        return None
    got = message["channel"]
    want = channel.encode() if isinstance(channel, str) else channel
    return message["data"] if (got.encode() if isinstance(got, str) else got) == want else None
