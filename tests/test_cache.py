"""The result cache against a real Redis and real workers: hits, partial hits, misses after a model
change, expiry, duplicates, faults, and the per-request and global switches."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner
from worker_support import send_raw

from rerankq import RerankClient
from rerankq.cli.app import app as cli
from rerankq.core.constants import SCORE_KEY_PREFIX, model_identity_key, queue_name
from rerankq.core.contract import cache_key
from rerankq.producer.score_cache import ScoreCache
from rerankq.testing.local_redis import free_port
from rerankq.testing.model_shapes import build_tiny_bert
from rerankq.testing.processes import WorkerProcess, start_worker, stop_worker, wait_until_consuming
from rerankq.testing.waiting import wait_until

pytestmark = pytest.mark.slow

DOCS = ["Artificial intelligence studies learning machines.", "Apples grow on trees.", "Redis keeps data in memory."]


def _query(tag: str) -> str:
    return f"cache test query {tag} {time.monotonic_ns()}"  # unique: no test sees another's scores


def _score_keys(r: redis.Redis, model: str) -> int:
    return sum(1 for _ in r.scan_iter(match=f"{SCORE_KEY_PREFIX}{model}:*"))


def test_key_is_unambiguous_and_covers_identity_options_query_and_document() -> None:
    base = cache_key("m", "id", "opts", "ab", "c")
    assert base != cache_key("m", "id", "opts", "a", "bc")  # no concatenation collisions
    assert base != cache_key("m", "id2", "opts", "ab", "c")
    assert base != cache_key("m", "id", "opts2", "ab", "c")
    assert base == cache_key("m", "id", "opts", "ab", "c")
    assert base.startswith(f"{SCORE_KEY_PREFIX}m:")


def test_second_identical_job_is_answered_from_cache_with_identical_scores(workers: dict, client: RerankClient) -> None:
    query = _query("hit")
    first = client.submit(query, DOCS, model="tiny-bert", top_n=2, return_documents=True).result(timeout=30)
    second = client.submit(query, DOCS, model="tiny-bert", top_n=2, return_documents=True).result(timeout=30)
    assert (first.device, first.stats.pairs, first.stats.cache_hits) == ("cpu", 3, 0)
    assert (second.device, second.stats.pairs, second.stats.cache_hits) == ("cache", 0, 3)
    assert second.results == first.results  # same indices, same documents, bit-identical scores
    assert client.job(second.job_id).result(timeout=5).results == first.results  # fetchable by id


def test_partial_hit_computes_only_the_misses_and_merges_in_order(workers: dict, client: RerankClient) -> None:
    query = _query("partial")
    warm = client.submit(query, DOCS[:2], model="tiny-xlmr").result(timeout=30)
    mixed = [DOCS[1], "A brand new passage about reranking.", DOCS[0], "Another new one."]
    partial = client.submit(query, mixed, model="tiny-xlmr", top_n=3, return_documents=True).result(timeout=30)
    fresh = client.submit(query, mixed, model="tiny-xlmr", top_n=3, return_documents=True, cache=False)
    expected = fresh.result(timeout=30)

    assert (partial.device, partial.stats.cache_hits, partial.stats.pairs) == ("cpu", 2, 2)
    assert [r.index for r in partial.results] == [r.index for r in expected.results]
    assert [r.document for r in partial.results] == [mixed[r.index] for r in partial.results]
    for got, want in zip(partial.results, expected.results, strict=True):
        assert got.score == pytest.approx(want.score, abs=1e-5)
    cached_scores = {mixed.index(DOCS[r.index]): r.score for r in warm.results}
    for r in partial.results:
        if r.index in cached_scores:
            assert r.score == cached_scores[r.index]


def test_duplicate_documents_are_scored_once(workers: dict, client: RerankClient) -> None:
    documents = [DOCS[0], DOCS[1], DOCS[0], DOCS[0], DOCS[1]]
    result = client.submit(_query("dup"), documents, model="tiny-bert", cache=False).result(timeout=30)
    assert result.stats.pairs == 2
    score = {r.index: r.score for r in result.results}
    assert score[0] == score[2] == score[3] and score[1] == score[4]


def test_cache_false_neither_reads_nor_writes(workers: dict, client: RerankClient) -> None:
    r = redis.Redis.from_url(client.settings.redis_url)
    query = _query("off")
    client.rank(query, DOCS, model="tiny-bert", timeout=30)  # cached now
    keys_before = _score_keys(r, "tiny-bert")
    bypass = client.submit(query, DOCS, model="tiny-bert", cache=False).result(timeout=30)
    assert (bypass.device, bypass.stats.pairs, bypass.stats.cache_hits) == ("cpu", 3, 0)
    client.rank(_query("off-new"), DOCS, model="tiny-bert", cache=False, timeout=30)
    assert _score_keys(r, "tiny-bert") == keys_before


def test_global_switch_turns_the_producer_cache_off(workers: dict, client: RerankClient) -> None:
    query = _query("global")
    client.rank(query, DOCS, model="tiny-bert", timeout=30)
    off = RerankClient(settings=client.settings.model_copy(update={"cache_enabled": False}))
    assert off.submit(query, DOCS, model="tiny-bert").result(timeout=30).device == "cpu"


def test_worker_reuses_scores_already_written_as_a_redelivered_job_would(workers: dict, client: RerankClient) -> None:
    query = _query("redelivery")
    client.rank(query, DOCS, model="tiny-bert", timeout=30)
    job = client.build(query, DOCS, model="tiny-bert")  # carries no producer hits, like a redelivery
    send_raw(client, job.model_dump(), queue_name("tiny-bert"), "tiny-bert")
    again = client.job(job.job_id).result(timeout=30)
    assert (again.device, again.stats.cache_hits, again.stats.pairs) == ("cpu", 3, 0)


def test_cached_scores_expire_after_the_ttl(client: RerankClient) -> None:
    cache = ScoreCache(client.settings.model_copy(update={"cache_ttl_s": 1}))
    cache.store("ttl-model", "identity", "opts", "q", {"doc": 0.25})
    assert cache.lookup("ttl-model", "identity", "opts", "q", ["doc"]) == {"doc": 0.25}
    wait_until(lambda: cache.lookup("ttl-model", "identity", "opts", "q", ["doc"]) == {}, timeout=10)


def test_worker_writes_carry_the_configured_ttl(workers: dict, client: RerankClient) -> None:
    r = redis.Redis.from_url(client.settings.redis_url)
    client.rank(_query("ttl"), DOCS, model="tiny-bert", timeout=30)
    ttls = [r.ttl(key) for key in r.scan_iter(match=f"{SCORE_KEY_PREFIX}tiny-bert:*")]
    assert ttls and all(0 < ttl <= client.settings.cache_ttl_s for ttl in ttls)


@pytest.fixture
def swap_worker(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        stop_worker(worker)


def test_a_model_change_is_a_miss(client: RerankClient, model_dirs: dict, tmp_path: Path, swap_worker: list) -> None:
    query = _query("swap")
    old = start_worker(str(model_dirs["tiny-bert"]), tmp_path / "old.log", "--name", "swap-model")
    swap_worker.append(old)
    wait_until_consuming(old)
    before = client.submit(query, DOCS, model="swap-model").result(timeout=30)
    assert client.submit(query, DOCS, model="swap-model").result(timeout=30).device == "cache"
    stop_worker(swap_worker.pop())

    retrained = build_tiny_bert(tmp_path / "retrained", seed=1)
    new = start_worker(str(retrained), tmp_path / "new.log", "--name", "swap-model")
    swap_worker.append(new)
    wait_until_consuming(new)
    published = redis.Redis.from_url(client.settings.redis_url).get(model_identity_key("swap-model"))
    wait_until(lambda: client.cache.identity("swap-model") == published.decode(), timeout=30)  # the producer re-reads
    after = client.submit(query, DOCS, model="swap-model").result(timeout=30)
    assert (after.device, after.stats.cache_hits, after.stats.pairs) == ("cpu", 0, 3)
    assert {r.index: r.score for r in after.results} != {r.index: r.score for r in before.results}


def test_cache_down_still_serves_and_counts_the_fault(
    client: RerankClient, model_dirs: dict, tmp_path: Path, swap_worker: list
) -> None:
    dead_cache = f"redis://127.0.0.1:{free_port()}/0"
    worker = start_worker(
        str(model_dirs["tiny-bert"]), tmp_path / "w.log", "--name", "no-cache", env={"RERANKQ_CACHE_URL": dead_cache}
    )
    swap_worker.append(worker)
    wait_until_consuming(worker)
    producer = RerankClient(settings=client.settings.model_copy(update={"cache_url": dead_cache}))
    results = producer.rank(_query("down"), DOCS, model="no-cache", timeout=30)
    assert sorted(r.index for r in results) == [0, 1, 2]
    assert producer.cache.faults >= 1
    assert "result cache" in worker.log() and "serving without it" in worker.log()


def test_cli_stats_and_clear(workers: dict, client: RerankClient) -> None:
    client.rank(_query("cli"), DOCS, model="tiny-xlmr", timeout=30)
    runner = CliRunner()
    stats = runner.invoke(cli, ["cache", "stats", "--json"])
    assert stats.exit_code == 0, stats.output
    assert '"keys"' in stats.output and '"hit_ratio"' in stats.output

    r = redis.Redis.from_url(client.settings.redis_url)
    bert_keys = _score_keys(r, "tiny-bert")
    cleared = runner.invoke(cli, ["cache", "clear", "--model", "tiny-xlmr"])
    assert cleared.exit_code == 0 and "deleted" in cleared.output
    assert _score_keys(r, "tiny-xlmr") == 0
    assert _score_keys(r, "tiny-bert") == bert_keys
