"""The model without the queue, in the benchmark's own process: what the pipeline is measured
against. Loaded by the worker's own loading code, so both sides run the same weights the same way."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sentence_transformers import CrossEncoder

from rerankq.bench.workload import Job, total_pairs
from rerankq.core.registry import ModelKind
from rerankq.core.settings import BackendName, Settings
from rerankq.worker.backends import Backend, CrossEncoderBackend, EncodedPair
from rerankq.worker.batcher import Batcher, BatchStats
from rerankq.worker.loading import load_backend, pick_device, resolve_model
from rerankq.worker.main import token_budget_for


@dataclass(frozen=True)
class Timed:
    seconds: float
    pairs: int

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds


@dataclass(frozen=True)
class BatchedRun:
    timed: Timed
    scores: list[list[float]]  # raw scores per job, in document order
    stats: BatchStats


class InProcessModel:
    """One model instance on one device, driven directly."""

    def __init__(
        self,
        spec: str,
        device: str,
        settings: Settings,
        kind: ModelKind | None = None,
        served_by: BackendName = "torch",
    ) -> None:
        manifest = resolve_model(spec, None, settings, kind)
        self.settings = settings
        self.token_budget = token_budget_for(manifest, pick_device(device), settings)  # as a worker's
        self.backend: Backend = load_backend(manifest, pick_device(device), settings.max_length, served_by, settings)
        self.backend.warm_up()

    def with_backend(self, backend: Backend) -> InProcessModel:
        """The same model's settings and token budget around another backend (a quantization of it)."""
        other = copy.copy(self)
        other.backend = backend
        return other

    def batched(self, jobs: Sequence[Job], window: int) -> BatchedRun:
        """The batcher fed directly, no queue: jobs arrive ``window`` at a time, as a worker
        holding that many jobs sees them."""
        pairs_cap = self.settings.batch_pairs_for(self.backend.device)
        batcher = Batcher(self.backend, self.token_budget, pairs_cap, max_wait_ms=60_000)
        batcher.start()
        started = time.perf_counter()
        try:
            scores: list[list[float]] = []
            for start in range(0, len(jobs), window):
                with batcher.preparing():  # the batcher takes the window as a whole
                    futures = [batcher.submit(self._encode(job)) for job in jobs[start : start + window]]
                scores += [future.result().scores for future in futures]
        finally:
            batcher.stop()
        return BatchedRun(Timed(time.perf_counter() - started, total_pairs(list(jobs))), scores, batcher.stats)

    def compute_ms(self, job: Job) -> float:
        """The model's own time for one job: tokenize and one forward pass."""
        started = time.perf_counter()
        self.backend.forward(self._encode(job))
        return (time.perf_counter() - started) * 1000

    def predict_per_job(self, jobs: Sequence[Job], batch_size: int = 32) -> Timed:
        """The deployment-guide recipe (a FastAPI handler around ``CrossEncoder``): each job, in
        arrival order, scored by its own ``predict(pairs, batch_size=32)`` call."""
        model = self.cross_encoder()
        started = time.perf_counter()
        for job in jobs:
            model.predict([(job.query, doc) for doc in job.documents], batch_size=batch_size, show_progress_bar=False)
        return Timed(time.perf_counter() - started, total_pairs(list(jobs)))

    def per_job_padding(self, jobs: Sequence[Job], batch_size: int = 32) -> float:
        """Padded / real tokens of ``predict_per_job``: ``predict`` sorts one call's pairs by
        length and pads each batch of ``batch_size`` to its longest pair."""
        stats = BatchStats()
        for job in jobs:
            lengths = sorted((pair.length for pair in self._encode(job)), reverse=True)
            for start in range(0, len(lengths), batch_size):
                stats.add(lengths[start : start + batch_size])
        return stats.padding_ratio

    def cross_encoder(self) -> CrossEncoder:
        if not isinstance(self.backend, CrossEncoderBackend):
            raise ValueError(f"this scenario compares with CrossEncoder.predict; {self.backend.kind} models have none")
        return self.backend.model

    def _encode(self, job: Job) -> list[EncodedPair]:
        return self.backend.encode(job.query, job.documents, self.backend.limits())
