"""Out-of-memory handling, driven by the documented fault injection (the real torch.OutOfMemoryError
type) through the real batcher, queue and worker processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from rerankq import JobTimeout, RerankClient
from rerankq.testing.processes import WorkerProcess, start_worker, stop_worker, wait_until_consuming
from rerankq.worker.backends import CrossEncoderBackend, OomInjectingBackend
from rerankq.worker.batcher import Batcher
from rerankq.worker.oom import AdaptiveBudget, PairTooLarge

MODEL = "oom-model"
SHORT = [f"short passage number {i}" for i in range(40)]
LONG = "a very long passage that will not fit on the pretend GPU " * 12


@pytest.fixture(scope="module")
def tiny_backend(model_dirs: dict[str, Path]) -> CrossEncoderBackend:
    return CrossEncoderBackend(CrossEncoder(str(model_dirs["tiny-bert"]), device="cpu"), "cpu", 512)


@pytest.fixture(scope="module")
def reference(model_dirs: dict[str, Path]) -> CrossEncoder:
    return CrossEncoder(str(model_dirs["tiny-bert"]), device="cpu", max_length=512)


def _run(batcher: Batcher, jobs: list[list]) -> list:
    batcher.start()
    try:
        futures = [batcher.submit(pairs) for pairs in jobs]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=60))
            except PairTooLarge as e:
                outcomes.append(e)
        return outcomes
    finally:
        batcher.stop()


def test_budget_halves_on_oom_and_recovers_gradually() -> None:
    budget = AdaptiveBudget(16_384, floor=256)
    for _ in range(3):
        budget.shrink(batch_pairs=64, batch_tokens=16_000)
    assert budget.current == 2048 and budget.oom_splits == 3
    budget.recover()
    assert 2048 < budget.current < 16_384 and budget.consecutive_ooms == 0
    for _ in range(100):
        budget.recover()
    assert budget.current == 16_384


def test_an_oom_batch_is_split_and_every_score_is_correct(tiny_backend: CrossEncoderBackend) -> None:
    pairs = tiny_backend.encode("query", SHORT, tiny_backend.limits(512))
    faulty = OomInjectingBackend(tiny_backend, batch_tokens=100, pair_tokens=None)
    batcher = Batcher(faulty, token_budget=100_000, max_batch_pairs=256, max_wait_ms=0)
    [result] = _run(batcher, [pairs])
    assert batcher.budget.oom_splits > 0
    assert result.scores == pytest.approx([tiny_backend.forward([p])[0] for p in pairs], abs=1e-5)


def test_a_pair_too_large_alone_fails_only_its_own_job(tiny_backend: CrossEncoderBackend) -> None:
    faulty = OomInjectingBackend(tiny_backend, batch_tokens=None, pair_tokens=40)
    batcher = Batcher(faulty, token_budget=100_000, max_batch_pairs=256, max_wait_ms=50)
    good = tiny_backend.encode("query", SHORT[:5], tiny_backend.limits(512))
    bad = tiny_backend.encode("query", [SHORT[0], LONG], tiny_backend.limits(512))
    good_result, bad_result = _run(batcher, [good, bad])
    assert isinstance(bad_result, PairTooLarge) and "does not fit alone" in str(bad_result)
    assert good_result.scores == pytest.approx(tiny_backend.forward(good), abs=1e-5)


@pytest.fixture(scope="module")
def pretend_gpu_worker(
    model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, redis_server
) -> Iterator[WorkerProcess]:
    """A worker that behaves like a small GPU: OOM above 200 batch tokens or 60 pair tokens."""
    env = {"RERANKQ_FAULT_OOM_BATCH_TOKENS": "200", "RERANKQ_FAULT_OOM_PAIR_TOKENS": "60"}
    log = tmp_path_factory.mktemp("oom") / "gpu.log"
    worker = start_worker(str(model_dirs["tiny-bert"]), log, "--name", MODEL, "--lanes", "interactive", env=env)
    try:
        wait_until_consuming(worker)
        yield worker
    finally:
        stop_worker(worker)


@pytest.mark.slow
def test_big_batch_ooms_are_split_through_the_queue(
    pretend_gpu_worker: WorkerProcess, client: RerankClient, reference: CrossEncoder
) -> None:
    query = f"split query {time.monotonic_ns()}"
    result = client.submit(query, SHORT, model=MODEL, cache=False).result(timeout=60)
    assert result.rerouted_from is None and len(result.results) == len(SHORT)
    expected = reference.predict([(query, d) for d in SHORT])
    got = [r.score for r in sorted(result.results, key=lambda r: r.index)]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert '"event": "oom"' in pretend_gpu_worker.log()


@pytest.mark.slow
def test_a_pair_that_never_fits_moves_to_a_cpu_worker(
    pretend_gpu_worker: WorkerProcess, client: RerankClient, reference: CrossEncoder, tmp_path: Path, model_dirs
) -> None:
    query = f"fallback query {time.monotonic_ns()}"
    documents = [SHORT[0], LONG, SHORT[1]]
    handle = client.submit(query, documents, model=MODEL, cache=False)

    # no CPU worker yet: the job waits on the cpu lane and the timeout says so
    with pytest.raises(JobTimeout) as info:
        handle.result(timeout=3)
    message = str(info.value)
    assert handle.id in message and f"waiting for a CPU worker of model {MODEL}" in message
    assert handle.status() == "waiting_for_cpu"

    # the GPU worker keeps serving other jobs meanwhile
    other = client.submit(f"{query} other", SHORT[:3], model=MODEL, cache=False).result(timeout=30)
    assert other.rerouted_from is None

    cpu = start_worker(str(model_dirs["tiny-bert"]), tmp_path / "cpu.log", "--name", MODEL, "--lanes", "cpu")
    try:
        wait_until_consuming(cpu)
        result = handle.result(timeout=60)  # the same handle resolves
    finally:
        stop_worker(cpu)
    assert result.job_id == handle.id and result.rerouted_from == "cpu" and result.device == "cpu"
    assert all(str(cpu.process.pid) in batch for batch in result.stats.batches)
    expected = reference.predict([(query, d) for d in documents])
    got = [r.score for r in sorted(result.results, key=lambda r: r.index)]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert '"event": "cpu_reroute"' in pretend_gpu_worker.log()
