"""On RabbitMQ, acks and rejects go out from Celery's event loop, never from a job's thread.

Celery's thread pool acknowledges a late-acked job on the thread that ran it, writing to the
consumer's AMQP connection while the event loop reads and writes the same socket. py-amqp is not
thread-safe (celery/py-amqp#16, kombu#929): under a burst of jobs a worker's connection stalled
(no reply to the consumer's next request, no heartbeat), the broker dropped it after the
heartbeat timeout, and its jobs were run again. kombu's ``Hub.call_soon`` is the thread-safe way
in: it queues the call and wakes the loop. On Redis the ack is a Redis command on redis-py's
pool, which serves any thread, so it stays where Celery makes it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from celery import bootsteps

_hub: Any = None  # the worker's event loop, once its consumer starts (RabbitMQ only)


def on_event_loop(call: Callable[..., Any], *args: Any) -> None:
    """``call(*args)`` on the event loop when acks must go out there; at once otherwise."""
    if _hub is None:
        call(*args)
    else:  # bound first: call_soon drops the arguments of a callback that is a vine promise (Celery's on_ack)
        _hub.call_soon(functools.partial(call, *args))


def loop_acks_step() -> type[bootsteps.StartStopStep]:
    """A bootstep of Celery's consumer that routes this worker's acks through its event loop."""

    class LoopAcks(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, consumer: Any) -> None:
            global _hub
            _hub = consumer.controller.hub  # kept across reconnects: the loop outlives them

    return LoopAcks
