"""Lanes on RabbitMQ: a worker stops taking jobs of a lane while a more urgent lane has jobs waiting.

Why this mechanism. RabbitMQ hands a consumer the next message of whichever of its queues has one
when a prefetch slot frees: across queues there is no order, so a worker full of bulk jobs would
give every second freed slot to bulk while interactive jobs wait. Message priorities order one
queue only, and quorum queues have none before RabbitMQ 4.0; one queue per model for all lanes
would lose each lane's depth (the gateway's 429s, autoscaling) and the cpu lane that GPU workers
must not take. So each lane keeps its queue, and every ``CHECK_EVERY_S`` this step reads the
waiting counts of the worker's lanes (a passive declare each), and again whenever a job of a less
urgent lane arrives, and cancels its consumers of every lane below the most urgent one that has
jobs waiting, restoring them once it has none. A job is
"waiting" only when no consumer had a free slot for it, so this never holds a lane back while a
worker could take the urgent job anyway. Jobs already delivered run as before (a forward pass
cannot be interrupted; the batcher serves held pairs in lane order too).

The consumer calls are kombu's public ``Consumer.cancel_by_queue`` / ``add_queue`` + ``consume``,
the ones Celery's own ``cancel_consumer`` / ``add_consumer`` control commands make. They run on
Celery's event loop (its timer), the only thread that may touch the consumer's channel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from celery import bootsteps, signals

from rerankq.core.broker import RabbitDepths

log = logging.getLogger("rerankq.worker")
CHECK_EVERY_S = 0.25  # as often as a Redis worker looks at its less urgent lanes
RECHECK_AFTER_S = 0.01  # a burst of arrivals costs one look, not one each


def lanes_to_pause(queues: Sequence[str], waiting: Sequence[int]) -> set[str]:
    """Every queue after the first (most urgent) one with jobs waiting; ``queues`` in lane order."""
    for place, count in enumerate(waiting):
        if count > 0:
            return set(queues[place + 1 :])
    return set()


class LaneGate:
    """Pauses and resumes the consumers of ``queues`` (this worker's lanes, most urgent first)."""

    def __init__(self, queues: Sequence[str], depths: RabbitDepths) -> None:
        self.queues = list(queues)
        self.depths = depths
        self.paused: set[str] = set()  # only these are resumed: a lane an operator cancelled stays so
        self.checked_at = float("-inf")

    def received(self, consumer: Any, queue: str) -> None:
        """A job of a less urgent lane just arrived: decide now, not at the next tick, or a
        worker of fast jobs takes several more of that lane in between."""
        if queue != self.queues[0] and time.monotonic() - self.checked_at >= RECHECK_AFTER_S:
            self.check(consumer)

    def check(self, consumer: Any) -> None:
        self.checked_at = time.monotonic()
        tasks = consumer.task_consumer
        if tasks is None:
            return
        try:
            paused = lanes_to_pause(self.queues, self.depths.waiting(self.queues))
        except Exception as e:  # the broker away: Celery reconnects; the next check decides
            log.debug("lane gate: cannot read queue depths: %s", e)
            return
        for queue in self.queues:
            if queue in paused and tasks.consuming_from(queue):
                tasks.cancel_by_queue(queue)
                self.paused.add(queue)
            elif queue not in paused and queue in self.paused:
                self.paused.discard(queue)
                if not tasks.consuming_from(queue):  # a reconnect consumes every lane again itself
                    tasks.add_queue(consumer.app.amqp.queues[queue])
                    tasks.consume()


def lane_gate_step(gate: LaneGate) -> type[bootsteps.StartStopStep]:
    """A bootstep of Celery's consumer that runs ``gate`` on the consumer's timer and as jobs
    arrive (Celery's ``task_received`` signal, sent on the consumer's thread)."""

    def on_received(sender: Any, request: Any, **_: Any) -> None:
        gate.received(sender, str((request.delivery_info or {}).get("routing_key") or ""))

    signals.task_received.connect(on_received, weak=False)

    class LaneGateStep(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = ("celery.worker.consumer.tasks:Tasks",)
        entry: Any = None

        def start(self, consumer: Any) -> None:
            self.entry = consumer.timer.call_repeatedly(CHECK_EVERY_S, gate.check, (consumer,))

        def stop(self, consumer: Any) -> None:
            if self.entry is not None:
                self.entry.cancel()
                self.entry = None

        def shutdown(self, consumer: Any) -> None:
            self.stop(consumer)
            gate.depths.close()

    return LaneGateStep
