"""The batcher on a real tiny model in-process: packing rules, routing, and score invariance."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest
from sentence_transformers import CrossEncoder

from worker.backends import CrossEncoderBackend, EncodedPair
from worker.batcher import Batcher, ScoredJob, _Item, _Submission, plan_batches


@pytest.fixture(scope="module")
def backend(model_dirs: dict[str, Path]) -> CrossEncoderBackend:
    return CrossEncoderBackend(CrossEncoder(str(model_dirs["tiny-xlmr"]), device="cpu"), "cpu", 512)


def _items(lengths: list[int]) -> list[_Item]:
    submission = _Submission([EncodedPair(({"input_ids": [0] * n},), n) for n in lengths], Future())
    return [_Item(submission, i) for i in range(len(lengths))]


def test_plan_respects_token_budget_and_pair_cap() -> None:
    lengths = [5, 300, 17, 120, 64, 9, 250, 33] * 20
    batches = plan_batches(_items(lengths), token_budget=1000, max_batch_pairs=16)
    assert sorted(it.length for batch in batches for it in batch) == sorted(lengths)
    for batch in batches:
        assert len(batch) <= 16
        assert len(batch) == 1 or len(batch) * max(it.length for it in batch) <= 1000


def test_a_pair_longer_than_the_budget_runs_alone() -> None:
    batches = plan_batches(_items([5000, 10, 10]), token_budget=1000, max_batch_pairs=16)
    assert [[it.length for it in batch] for batch in batches] == [[5000], [10, 10]]


def test_many_small_jobs_merge_into_one_forward_pass(backend: CrossEncoderBackend) -> None:
    batcher = Batcher(backend, token_budget=100_000, max_batch_pairs=256, max_wait_ms=200)
    batcher.start()
    try:
        futures = [batcher.submit(backend.encode(f"query {i}", [f"doc {j}" for j in range(5)], 512)) for i in range(20)]
        results: list[ScoredJob] = [f.result(timeout=30) for f in futures]
    finally:
        batcher.stop()
    assert len({batch for r in results for batch in r.batch_ids}) < 20
    for i, result in enumerate(results):
        assert result.scores == pytest.approx(
            backend.forward(backend.encode(f"query {i}", [f"doc {j}" for j in range(5)], 512)), abs=1e-5
        )


def test_a_large_job_is_split_and_routed_back_in_order(backend: CrossEncoderBackend) -> None:
    documents = [f"document {i} " * (1 + i % 9) for i in range(300)]
    pairs = backend.encode("query", documents, 512)
    batcher = Batcher(backend, token_budget=2048, max_batch_pairs=32, max_wait_ms=0)
    batcher.start()
    try:
        result = batcher.submit(pairs).result(timeout=60)
    finally:
        batcher.stop()
    assert len(result.batch_ids) >= 300 // 32
    alone = [backend.forward([pair])[0] for pair in pairs]
    assert result.scores == pytest.approx(alone, abs=1e-5)


def test_a_failing_forward_pass_fails_its_jobs_not_the_batcher(backend: CrossEncoderBackend) -> None:
    batcher = Batcher(backend, token_budget=100_000, max_batch_pairs=256, max_wait_ms=0)
    batcher.start()
    try:
        broken = EncodedPair(({"input_ids": [0, 10**9, 2], "attention_mask": [1, 1, 1]},), 3)  # id out of vocabulary
        with pytest.raises(IndexError):
            batcher.submit([broken]).result(timeout=30)
        assert len(batcher.submit(backend.encode("q", ["still serving"], 512)).result(timeout=30).scores) == 1
    finally:
        batcher.stop()
