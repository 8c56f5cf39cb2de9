"""Task events leave a worker from Celery's event loop, never from a job's thread.

With its event loop running, Celery buffers task events (received, started, succeeded, ...) and
asks the loop to publish them at its next turn, except that the job thread whose event fills the
buffer (24 events) publishes them itself, under the dispatcher's lock. On RabbitMQ that publish
waits for the broker's confirm (rerankq publishes with confirms) by reading the events
connection, which Celery has also registered with the event loop for reads (to consume the
broker's heartbeats): two threads reading one py-amqp connection, which is not thread-safe. Under
a burst of jobs the loop took a frame the job thread waited for; the job thread sat in ``recv``
holding the lock, the loop waited for the lock to publish the next events, sent no heartbeats,
and took no jobs until the broker dropped its connections 20-50 s later (a thread dump of such a
worker showed exactly this). Here a job thread's event never fills the buffer: only the loop
publishes, as Celery already asks it to on every buffered event.

The dispatcher is chosen through Celery's ``Celery(events=...)`` argument and the ``Events``
class's ``dispatcher_cls``; ``buffer_limit`` is a parameter of ``EventDispatcher``. Nothing
private is overridden.
"""

from __future__ import annotations

import sys
from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher


class LoopFlushedDispatcher(EventDispatcher):  # type: ignore[misc]
    """Celery's dispatcher with a buffer no job thread's event fills (the loop empties it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "buffer_limit": sys.maxsize})


class LoopFlushedEvents(Events):  # type: ignore[misc]
    dispatcher_cls = f"{__name__}:LoopFlushedDispatcher"


EVENTS = f"{__name__}:LoopFlushedEvents"  # what a worker's app is built with (Celery(events=...))
