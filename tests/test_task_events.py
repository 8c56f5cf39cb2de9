"""Task events leave a worker from its event loop only (rerankq.worker.task_events): a job
thread's event is buffered, never published from that thread, however many there are."""

from __future__ import annotations

import threading
from typing import Any

from celery.events.dispatcher import EventDispatcher
from kombu import Connection, Exchange, Queue

from rerankq.core.settings import get_settings
from rerankq.worker.app import create_worker_app


def published(connection: Connection, queue: Queue) -> list[Any]:
    """The event messages on ``queue`` (bound to Celery's event exchange), taken off it."""
    bound, taken = queue(connection.default_channel), []
    while (message := bound.get(no_ack=True)) is not None:
        taken.append(message.payload)
    return taken


def events_from_a_job_thread(dispatcher_class: Any, connection: Connection, asked: threading.Event) -> Any:
    dispatcher = dispatcher_class(connection, hostname="w", buffer_group=["task"], on_send_buffered=asked.set)

    def job_thread() -> None:
        for i in range(100):
            dispatcher.send("task-succeeded", uuid=f"job-{i}", runtime=0.01)

    thread = threading.Thread(target=job_thread)
    thread.start()
    thread.join()
    return dispatcher


def test_a_job_threads_task_events_wait_for_the_loop_however_many() -> None:
    worker_dispatcher = create_worker_app(get_settings(), "tiny-bert").events.Dispatcher
    events = Queue("seen", Exchange("celeryev", "topic"), routing_key="#")
    with Connection("memory://") as connection:  # kombu's in-memory transport: real publishes
        events(connection.default_channel).declare()

        celerys_own = events_from_a_job_thread(EventDispatcher, connection, threading.Event())
        assert published(connection, events), "Celery's dispatcher publishes from the job thread"
        celerys_own.close()

        loop_asked = threading.Event()
        ours = events_from_a_job_thread(worker_dispatcher, connection, loop_asked)
        assert published(connection, events) == [] and loop_asked.is_set()
        ours.flush()  # what the event loop does when asked
        (batch,) = published(connection, events)
        assert [event["uuid"] for event in batch] == [f"job-{i}" for i in range(100)]
        ours.close()
