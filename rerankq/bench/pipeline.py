"""Jobs through the real path: SDK → Redis (or RabbitMQ) → ``rerankq worker`` processes started
for the run."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rerankq.bench.inprocess import Timed
from rerankq.bench.workload import Job, make_jobs, total_pairs, uniform
from rerankq.core.registry import ModelKind
from rerankq.core.settings import get_settings
from rerankq.producer.client import RerankClient
from rerankq.testing.processes import WorkerProcess, running_workers

JOB_TIMEOUT_S = 600.0
_runs = itertools.count(1)


@dataclass(frozen=True)
class WorkerSetup:
    """Where and what the benchmark's workers serve."""

    redis_url: str
    spec: str  # --model for the workers: registry name, HF id or folder
    model: str  # the name jobs address
    device: str
    concurrency: int
    run_dir: Path
    kind: ModelKind | None = None  # --kind for the workers (an LLM reranker's folder)
    broker_url: str | None = None  # where jobs queue (amqp://... for RabbitMQ); None: redis_url

    @property
    def env(self) -> dict[str, str]:
        """The environment a worker or gateway of this set-up needs: its Redis, its broker."""
        broker = {"RERANKQ_BROKER_URL": self.broker_url} if self.broker_url else {}
        return {"RERANKQ_REDIS_URL": self.redis_url, **broker}

    def client(self) -> RerankClient:
        broker = {"broker_url": self.broker_url} if self.broker_url else {}
        return RerankClient(settings=get_settings().updated(redis_url=self.redis_url, **broker))


@dataclass
class Pipeline:
    client: RerankClient
    model: str
    workers: list[WorkerProcess] = field(default_factory=list)  # the serving processes
    cache: bool = True  # whether jobs read and write the result cache (off: the same text twice still computes)
    padding_ratio: float | None = field(default=None, init=False)  # known once the workers stopped

    def run(self, jobs: Sequence[Job]) -> tuple[Timed, list[list[float]]]:
        """Submit every job, then wait for every result: first submit to last result. Returns the
        raw scores per job in document order."""
        started = time.perf_counter()
        handles = [
            self.client.submit(job.query, job.documents, model=self.model, normalize=False, cache=self.cache)
            for job in jobs
        ]
        results = [handle.result(timeout=JOB_TIMEOUT_S) for handle in handles]
        elapsed = time.perf_counter() - started
        scores = [[doc.score for doc in sorted(result.results, key=lambda d: d.index)] for result in results]
        return Timed(elapsed, total_pairs(list(jobs))), scores

    def e2e_ms(self, job: Job) -> float:
        """One job, submit to ranked answer, as a web app would wait for it."""
        started = time.perf_counter()
        self.client.rank(job.query, job.documents, model=self.model, cache=self.cache, timeout=JOB_TIMEOUT_S)
        return (time.perf_counter() - started) * 1000

    def stages_ms(self, job: Job) -> dict[str, float]:
        """One job as ``rank()`` runs it (build, send, wait), its time cut at the clocks both sides
        keep (wall clocks: one machine): ``sdk`` checks, routing and enqueue; ``queue`` until the
        worker took it; ``tokenize``, ``batch_wait`` (until its first forward pass), ``forward``
        (the passes it rode in), ``worker_other`` (the rest of the worker's time: cache look-ups,
        hand-offs, ranking); ``result`` from the worker's answer to the client holding it (the
        result stored and published, the client woken); ``e2e`` the whole."""
        started = time.time()
        built = self.client.build(job.query, job.documents, model=self.model, cache=self.cache)
        self.client.send(built, require_worker=True)
        sent = time.time()
        stats = self.client.job(built.job_id).result(timeout=JOB_TIMEOUT_S).stats
        done = time.time()
        taken = built.enqueued_at + stats.queue_ms / 1000
        finished = stats.finished_at or done
        worked = (finished - taken) * 1000
        return {
            "e2e": (done - started) * 1000,
            "sdk": (sent - started) * 1000,
            "queue": (taken - sent) * 1000,
            "tokenize": stats.tokenize_ms,
            "batch_wait": stats.batch_wait_ms,
            "forward": stats.forward_ms,
            "worker_other": worked - stats.tokenize_ms - stats.batch_wait_ms - stats.forward_ms,
            "result": (done - finished) * 1000,
        }

    def paced_ms(self, jobs: Sequence[Job], pace_s: float) -> list[float]:
        """Jobs started one every ``pace_s`` (a steady rate, as web traffic comes), each timed."""
        latencies, started = [], time.perf_counter()
        for i, job in enumerate(jobs):
            time.sleep(max(0.0, started + i * pace_s - time.perf_counter()))
            latencies.append(self.e2e_ms(job))
        return latencies

    def bulk(self, jobs: Sequence[Job]) -> Timed:
        """The jobs as bulk records through ``rank_many``: first record read to last result."""
        started = time.perf_counter()
        results = list(self.client.rank_many(_records(jobs), model=self.model, normalize=False))
        if failed := [r.error for r in results if not r.ok]:
            raise RuntimeError(f"{len(failed)} bulk records failed, e.g. {failed[0]}")
        return Timed(time.perf_counter() - started, total_pairs(list(jobs)))

    @contextmanager
    def bulk_running(self, make_record: Callable[[], Job]) -> Iterator[Callable[[], int]]:
        """A bulk run in a thread, fed until the block ends (then it finishes its jobs in flight);
        entered once its first results came back, so the workers are saturated. Yields a
        function counting the pairs it has finished so far."""
        stop, first_result = threading.Event(), threading.Event()
        done = [0]

        def endless() -> Iterator[Job]:
            while not stop.is_set():
                yield make_record()

        def run() -> None:
            for result in self.client.rank_many(_records(endless()), model=self.model):
                done[0] += result.pairs
                first_result.set()

        runner = threading.Thread(target=run, name="bench-bulk", daemon=True)
        runner.start()
        first_result.wait(JOB_TIMEOUT_S)
        try:
            yield lambda: done[0]
        finally:
            stop.set()
            runner.join(JOB_TIMEOUT_S)

    def warm_up(self, count: int) -> None:
        """A first round of jobs so every job thread, connection and allocator is warm."""
        self.run(make_jobs(count, 4, uniform(8, 32)))


@contextmanager
def serving(
    setup: WorkerSetup, workers: int = 1, *worker_args: str, env: Mapping[str, str] | None = None
) -> Iterator[Pipeline]:
    """``workers`` worker processes for the set-up's model, ready on entry, stopped on exit
    (``env``: added to their environment)."""
    log_dir = setup.run_dir / f"run-{next(_runs)}"
    args = ["--name", setup.model, "--concurrency", str(setup.concurrency), *worker_args]
    args += ["--kind", setup.kind] if setup.kind else []
    # benchmark shapes carry random weights: timing needs no golden-ranking check
    environment = {**setup.env, "RERANKQ_CHECK_RANKING": "false", **(env or {})}
    with (
        running_workers(setup.spec, log_dir, workers, *args, device=setup.device, env=environment) as processes,
        setup.client() as client,
    ):
        pipeline = Pipeline(client, setup.model, processes)
        pipeline.warm_up(2 * setup.concurrency)
        yield pipeline
    pipeline.padding_ratio = _padding_ratio(processes)


def _records(jobs: Iterable[Job]) -> Iterator[dict[str, object]]:
    for i, job in enumerate(jobs):
        yield {"id": i, "query": job.query, "documents": job.documents}


def _padding_ratio(workers: list[WorkerProcess]) -> float | None:
    """Over every batch the workers ran (their ``batcher_totals`` line at shutdown)."""
    real = padded = 0
    for worker in workers:
        for line in worker.log().splitlines():
            if '"batcher_totals"' in line:
                totals = json.loads(line[line.index("{") :])
                real, padded = real + totals["real_tokens"], padded + totals["padded_tokens"]
    return padded / real if real else None
