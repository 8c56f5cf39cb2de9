"""``rerankq bench brokers``: the same jobs queued on Redis and on RabbitMQ, side by side in one
run, with the same model and two workers each: pairs/s, single-job latency, and how long a
backlog takes to finish once one of the two workers is killed with SIGKILL. Default settings on
both: on Redis the survivor's sweep gives the dead worker's jobs back once its presence is three
presence intervals old (~15 s); on RabbitMQ the broker redelivers them when the connection drops.

Both brokers' workers run at once (the idle pair costs nothing) and the timed work alternates
between them (throughput in two halves, ABBA; latency job by job), so a slower minute of a
shared machine hits both; only the kills run one after the other."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from rerankq.bench.inprocess import Timed
from rerankq.bench.pipeline import JOB_TIMEOUT_S, Pipeline, WorkerSetup, serving
from rerankq.bench.scenarios import PASSAGES, percentile
from rerankq.bench.workload import Job, make_jobs, total_pairs
from rerankq.producer.job_handles import JobHandle
from rerankq.producer.job_status import JobStatus
from rerankq.testing.rabbitmq import rabbitmq_vhost
from rerankq.testing.waiting import wait_until

Record = dict[str, Any]
BROKERS = ("redis", "rabbitmq")
WORKERS = 2  # per broker, so a kill leaves one
BACKLOG_DOCUMENTS = 4
TAKE_S = 0.5  # from the killed worker's first job of the backlog to the kill: it takes its share
RATIOS = ("pairs_per_s", "e2e_ms_p50", "e2e_ms_p99", "recovery_s")


def broker_comparison(setup: WorkerSetup, count: int, docs: int, samples: tuple[int, int]) -> Iterator[Record]:
    """One record per broker (``count`` x ``docs`` jobs for pairs/s, ``samples`` = (jobs,
    documents) single jobs for latency, ``count // 3`` x 4 jobs as the backlog a kill
    interrupts), then one with the ratios rabbitmq / redis. The RabbitMQ side uses the set-up's
    broker when it is RabbitMQ (``--broker rabbitmq``), else a virtual host of its own."""
    throughput_jobs = make_jobs(count, docs, PASSAGES)
    halves = [half for half in (throughput_jobs[: count // 2], throughput_jobs[count // 2 :]) if half]
    latency_jobs = make_jobs(*samples, PASSAGES)
    # small enough that the survivor finishes its own share well within the Redis sweep's wait
    backlog = make_jobs(max(2, count // 3), BACKLOG_DOCUMENTS, PASSAGES)
    with ExitStack() as stack:
        rabbitmq_url = setup.broker_url if _on_rabbitmq(setup) else stack.enter_context(rabbitmq_vhost("rerankq-bench"))
        # Redis named explicitly: a RERANKQ_BROKER_URL in the environment does not move it
        urls = {"redis": setup.redis_url, "rabbitmq": rabbitmq_url}
        pipelines = {
            broker: stack.enter_context(serving(replace(setup, broker_url=urls[broker]), WORKERS)) for broker in BROKERS
        }
        for pipeline in pipelines.values():
            pipeline.cache = False  # the same text on both brokers: computed both times
        runs: dict[str, list[Timed]] = {broker: [] for broker in BROKERS}
        for i, half in enumerate(halves):
            for broker in _alternating(i):
                runs[broker].append(pipelines[broker].run(half)[0])
        latencies: dict[str, list[float]] = {broker: [] for broker in BROKERS}
        for i, job in enumerate(latency_jobs):
            for broker in _alternating(i):
                latencies[broker].append(pipelines[broker].e2e_ms(job))
        recoveries = {broker: _recovery(pipelines[broker], backlog) for broker in BROKERS}
    measured: dict[str, Record] = {}
    for broker in BROKERS:
        recovery_s, unfinished, stranded = recoveries[broker]
        measured[broker] = {
            "broker": broker,
            "workers": WORKERS,
            "pairs_per_s": sum(run.pairs for run in runs[broker]) / sum(run.seconds for run in runs[broker]),
            "e2e_ms_p50": percentile(latencies[broker], 50),
            "e2e_ms_p99": percentile(latencies[broker], 99),
            "recovery_s": recovery_s,
            "unfinished_at_kill": unfinished,
            "stranded_jobs": stranded,
            "backlog_pairs": total_pairs(backlog),
        }
        yield measured[broker]
    redis, rabbitmq = measured["redis"], measured["rabbitmq"]
    yield {"broker": "rabbitmq/redis", **{f"{name}_ratio": rabbitmq[name] / redis[name] for name in RATIOS}}


def _alternating(i: int) -> Sequence[str]:
    return BROKERS if i % 2 == 0 else BROKERS[::-1]


def _recovery(pipeline: Pipeline, backlog: list[Job]) -> tuple[float, int, int]:
    """Submit the backlog; once the first worker has taken jobs of it (its log says so) and had
    half a second to start on them, SIGKILL it. Seconds from the kill until every job is done; how
    many jobs were unfinished then, and how many the killed worker had taken and another finished."""
    victim = pipeline.workers[0]
    handles = [pipeline.client.submit(job.query, job.documents, model=pipeline.model, cache=False) for job in backlog]
    ids = {handle.id for handle in handles}
    wait_until(lambda: _received(victim.log()) & ids or _all_done(handles), JOB_TIMEOUT_S)
    time.sleep(TAKE_S)
    killed_at = time.perf_counter()
    victim.process.kill()
    victim.process.wait()
    unfinished = sum(handle.status() != JobStatus.SUCCEEDED for handle in handles)
    results = [handle.result(timeout=JOB_TIMEOUT_S) for handle in handles]
    recovery_s = time.perf_counter() - killed_at
    mark = f":{victim.process.pid}:"  # in the ids of the forward passes it ran
    taken = _received(victim.log())
    stranded = [r for r in results if r.job_id in taken and not any(mark in batch for batch in r.stats.batches)]
    return recovery_s, unfinished, len(stranded)


def _all_done(handles: list[JobHandle]) -> bool:
    return all(handle.status() == JobStatus.SUCCEEDED for handle in handles)


def _received(log: str) -> set[str]:
    """The job ids a worker took off its queues (Celery logs each as it arrives)."""
    return {line.split("[", 1)[1].split("]", 1)[0] for line in log.splitlines() if "] received" in line}


def _on_rabbitmq(setup: WorkerSetup) -> bool:
    return bool(setup.broker_url and setup.broker_url.startswith(("amqp://", "amqps://")))
