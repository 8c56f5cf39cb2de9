"""The batcher on a real tiny model in-process: packing rules, routing, and score invariance."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest
from sentence_transformers import CrossEncoder

from rerankq.testing.waiting import wait_until
from rerankq.worker.backends import CrossEncoderBackend, EncodedPair
from rerankq.worker.batcher import Batcher, ScoredJob, _Item, _Submission, plan_batches

# Raw logits (the tiny model's reach about ±5) of one pair padded in different batches, summed by
# two torch threads in whichever order they finish: fp32 noise up to ~1.2e-5 was seen in CI.
RAW_TOLERANCE = 5e-5


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


def test_the_budget_counts_each_row_as_its_widest_prefix_plus_its_longest_own_tokens() -> None:
    """Pairs of LLM jobs with shared prompts: a row holds keys for the batch's longest prefix and its
    longest own part, which can be more than the longest whole pair."""
    pairs = [EncodedPair(({"input_ids": [0] * n},), n, prefix) for n, prefix in [(100, 90)] * 4 + [(100, 10)] * 4]
    submission = _Submission(pairs, Future())
    batches = plan_batches([_Item(submission, i) for i in range(len(pairs))], token_budget=1000, max_batch_pairs=16)
    for batch in batches:
        rows = [submission.pairs[item.position] for item in batch]
        wide = max(p.prefix_length for p in rows) + max(p.own_length for p in rows)
        assert len(batch) * wide <= 1000
    assert len(batches) > 1  # 8 x 100 would fit; 8 x (90 + 90) does not


def test_a_pair_longer_than_the_budget_runs_alone() -> None:
    batches = plan_batches(_items([5000, 10, 10]), token_budget=1000, max_batch_pairs=16)
    assert [[it.length for it in batch] for batch in batches] == [[5000], [10, 10]]


def test_many_small_jobs_merge_into_one_forward_pass(backend: CrossEncoderBackend) -> None:
    batcher = Batcher(backend, token_budget=100_000, max_batch_pairs=256, max_wait_ms=200)
    batcher.start()
    try:
        with batcher.preparing():  # as a worker's job threads do while more jobs arrive
            futures = [
                batcher.submit(backend.encode(f"query {i}", [f"doc {j}" for j in range(5)], backend.limits(512)))
                for i in range(20)
            ]
        results: list[ScoredJob] = [f.result(timeout=30) for f in futures]
    finally:
        batcher.stop()
    assert len({batch for r in results for batch in r.batch_ids}) < 20
    for i, result in enumerate(results):
        assert result.scores == pytest.approx(
            backend.forward(backend.encode(f"query {i}", [f"doc {j}" for j in range(5)], backend.limits(512))),
            abs=RAW_TOLERANCE,
        )


def test_a_large_job_is_split_and_routed_back_in_order(backend: CrossEncoderBackend) -> None:
    documents = [f"document {i} " * (1 + i % 9) for i in range(300)]
    pairs = backend.encode("query", documents, backend.limits(512))
    batcher = Batcher(backend, token_budget=2048, max_batch_pairs=32, max_wait_ms=0)
    batcher.start()
    try:
        result = batcher.submit(pairs).result(timeout=60)
    finally:
        batcher.stop()
    assert len(result.batch_ids) >= 300 // 32
    alone = [backend.forward([pair])[0] for pair in pairs]
    assert result.scores == pytest.approx(alone, abs=RAW_TOLERANCE)


def test_a_failing_forward_pass_fails_its_jobs_not_the_batcher(backend: CrossEncoderBackend) -> None:
    batcher = Batcher(backend, token_budget=100_000, max_batch_pairs=256, max_wait_ms=0)
    batcher.start()
    try:
        broken = EncodedPair(({"input_ids": [0, 10**9, 2], "attention_mask": [1, 1, 1]},), 3)  # id out of vocabulary
        with pytest.raises(IndexError):
            batcher.submit([broken]).result(timeout=30)
        assert (
            len(batcher.submit(backend.encode("q", ["still serving"], backend.limits(512))).result(timeout=30).scores)
            == 1
        )
    finally:
        batcher.stop()


def _two_jobs(backend: CrossEncoderBackend) -> list[list[EncodedPair]]:
    return [
        backend.encode(f"query {i}", [f"doc {j} of job {i}" for j in range(4)], backend.limits(512)) for i in range(2)
    ]


def test_a_lone_job_runs_at_once_without_waiting_for_company(backend: CrossEncoderBackend) -> None:
    batcher = Batcher(backend, token_budget=100_000, max_batch_pairs=256, max_wait_ms=600_000)
    batcher.start()
    try:  # nothing else is being prepared, so the ten-minute wait must not apply
        assert len(batcher.submit(_two_jobs(backend)[0]).result(timeout=30).scores) == 4
    finally:
        batcher.stop()


def test_pending_pairs_wait_for_a_job_being_prepared(backend: CrossEncoderBackend) -> None:
    batcher = Batcher(backend, token_budget=100_000, max_batch_pairs=256, max_wait_ms=600_000)
    batcher.start()
    try:
        with batcher.preparing():
            early = batcher.submit(_two_jobs(backend)[0])
            wait_until(lambda: batcher.stats.held == 1)  # the batcher took up these pairs, and held them
            assert not early.done()
        assert len(early.result(timeout=30).scores) == 4  # released once nothing is being prepared
    finally:
        batcher.stop()


def test_jobs_prepared_together_share_one_forward_pass(backend: CrossEncoderBackend) -> None:
    batcher = Batcher(backend, token_budget=100_000, max_batch_pairs=256, max_wait_ms=600_000)
    batcher.start()
    first, second = _two_jobs(backend)
    try:
        with batcher.preparing():
            futures = [batcher.submit(first), batcher.submit(second)]
        results = [f.result(timeout=30) for f in futures]
    finally:
        batcher.stop()
    assert results[0].batch_ids == results[1].batch_ids and len(results[0].batch_ids) == 1
    assert batcher.stats.batches == 1 and batcher.stats.pairs == 8


def test_without_cross_job_batching_each_job_gets_its_own_forward_pass(backend: CrossEncoderBackend) -> None:
    batcher = Batcher(backend, token_budget=100_000, max_batch_pairs=256, max_wait_ms=600_000, cross_job=False)
    batcher.start()
    jobs = [
        backend.encode(f"query {i}", [f"doc {j}" * (1 + j) for j in range(6)], backend.limits(512)) for i in range(5)
    ]
    try:
        with batcher.preparing():
            futures = [batcher.submit(pairs) for pairs in jobs]
        results = [f.result(timeout=30) for f in futures]
    finally:
        batcher.stop()
    batch_ids = [result.batch_ids for result in results]
    assert all(len(ids) == 1 for ids in batch_ids) and len({ids[0] for ids in batch_ids}) == 5
    for pairs, result in zip(jobs, results, strict=True):
        assert result.scores == pytest.approx(backend.forward(pairs), abs=RAW_TOLERANCE)
    lengths = [[pair.length for pair in pairs] for pairs in jobs]
    assert batcher.stats.real_tokens == sum(map(sum, lengths))
    assert batcher.stats.padded_tokens == sum(len(job) * max(job) for job in lengths)
    assert batcher.stats.padding_ratio > 1
