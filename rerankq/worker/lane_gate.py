"""Lanes on RabbitMQ: a worker stops taking jobs of a lane while a more urgent lane has jobs waiting.

Why this mechanism. RabbitMQ hands a consumer the next message of whichever of its queues has one
when a prefetch slot frees: across queues there is no order, so a worker full of bulk jobs would
give every second freed slot to bulk while interactive jobs wait. Message priorities order one
queue only, and quorum queues have none before RabbitMQ 4.0; one queue per model for all lanes
would lose each lane's depth (the gateway's 429s, autoscaling) and the cpu lane that GPU workers
must not take. So each lane keeps its queue; every ``POLL_EVERY_S`` (and at once when a job of a
less urgent lane arrives) a thread reads the waiting counts of the worker's lanes (a passive
declare each), and the worker cancels its consumers of every lane below the most urgent one that
has jobs waiting, restoring them once it has none. A job is
"waiting" only when no consumer had a free slot for it, so this never holds a lane back while a
worker could take the urgent job anyway. Jobs already delivered run as before (a forward pass
cannot be interrupted; the batcher serves held pairs in lane order too).

The consumer calls are kombu's public ``Consumer.cancel_by_queue`` / ``add_queue`` + ``consume``,
the ones Celery's own ``cancel_consumer`` / ``add_consumer`` control commands make. They run on
Celery's event loop (its timer), the only thread that may touch the consumer's channel.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from celery import bootsteps, signals

from rerankq.core.broker import RabbitDepths
from rerankq.errors import BrokerUnavailable

log = logging.getLogger("rerankq.worker")
POLL_EVERY_S = 0.25  # as often as a Redis worker looks at its less urgent lanes
APPLY_EVERY_S = 0.05  # how soon the event loop acts on a new count


def lanes_to_pause(queues: Sequence[str], waiting: Sequence[int]) -> set[str]:
    """Every queue after the first (most urgent) one with jobs waiting; ``queues`` in lane order."""
    for place, count in enumerate(waiting):
        if count > 0:
            return set(queues[place + 1 :])
    return set()


class LaneGate:
    """Pauses and resumes the consumers of ``queues`` (this worker's lanes, most urgent first).

    The counts are read by a thread of its own: a broker slow to answer must never stall Celery's
    event loop, which also sends the AMQP heartbeats (a stalled loop loses its connection, and
    its jobs). The loop only acts on the latest counts, which costs no I/O unless a lane's state
    changes."""

    def __init__(self, queues: Sequence[str], depths: RabbitDepths) -> None:
        self.queues = list(queues)
        self.depths = depths
        self.to_pause: frozenset[str] = frozenset()  # from the latest counts
        self.paused: set[str] = set()  # only these are resumed: a lane an operator cancelled stays so
        self._poll_now = threading.Event()
        self._applying = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="rerankq-lane-gate", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._poll_now.set()
        self.depths.close()

    def _poll(self) -> None:
        while not self._stopped.is_set():
            try:
                self.to_pause = frozenset(lanes_to_pause(self.queues, self.depths.waiting(self.queues)))
            except BrokerUnavailable as e:  # Celery reconnects its own connection; counts again next time
                log.debug("lane gate: %s", e)
            self._poll_now.wait(POLL_EVERY_S)
            self._poll_now.clear()

    def received(self, consumer: Any, queue: str) -> None:
        """A job of a less urgent lane arrived: act on what is known now, and count again at once."""
        if queue != self.queues[0]:
            self._poll_now.set()
            self.apply(consumer)

    def apply(self, consumer: Any) -> None:
        """On Celery's event loop (the only thread that may touch the consumer's channel). Not
        re-entered: a consumer's cancel waits for the broker's reply, and jobs arriving meanwhile
        are dispatched from inside that wait; a second cancel there would wait for a reply the
        first one takes, and the loop (heartbeats, acks) would stop. The next tick catches up."""
        tasks = consumer.task_consumer
        if tasks is None or self._applying:
            return
        self._applying = True
        try:
            self._apply(consumer, tasks)
        finally:
            self._applying = False

    def _apply(self, consumer: Any, tasks: Any) -> None:
        paused = self.to_pause
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
    """A bootstep of Celery's consumer that applies ``gate`` on the consumer's timer and as jobs
    arrive (Celery's ``task_received`` signal, sent on the consumer's thread)."""

    def on_received(sender: Any, request: Any, **_: Any) -> None:
        gate.received(sender, str((request.delivery_info or {}).get("routing_key") or ""))

    signals.task_received.connect(on_received, weak=False)

    class LaneGateStep(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = ("celery.worker.consumer.tasks:Tasks",)
        entry: Any = None

        def start(self, consumer: Any) -> None:
            gate.start()
            self.entry = consumer.timer.call_repeatedly(APPLY_EVERY_S, gate.apply, (consumer,))

        def stop(self, consumer: Any) -> None:
            if self.entry is not None:
                self.entry.cancel()
                self.entry = None

        def shutdown(self, consumer: Any) -> None:
            self.stop(consumer)
            gate.stop()

    return LaneGateStep
