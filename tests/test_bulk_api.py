"""``client.rank_many``: bulk records through the bulk lane of real workers, on real Redis."""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any

import pytest
import redis
from worker_support import paused

from rerankq import BulkRecord, RecordResult, RerankClient
from rerankq.core.constants import queue_keys, queue_name
from rerankq.core.settings import Settings
from rerankq.testing.processes import WorkerProcess
from rerankq.testing.waiting import wait_until

MODEL = "tiny-bert"
# Bulk jobs ride other forward passes than the interactive reference: padding to another length
# moves fp32 scores by ~2e-6 on CPU; test_batcher holds batch composition to this same bound.
BATCH_TOLERANCE = 1e-5
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


def fresh(n: int, words: int = 6) -> list[str]:
    """Texts no other test scored (the result cache stays out of the way)."""
    tag = uuid.uuid4().hex[:8]
    return [f"{tag} {i} " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words)) for i in range(n)]


def depth(redis_url: str, model: str, lane: Any) -> int:
    client = redis.Redis.from_url(redis_url)
    return sum(int(client.llen(key)) for key in queue_keys(queue_name(model, lane)))


def result_keys(redis_url: str) -> int:
    return sum(1 for _ in redis.Redis.from_url(redis_url).scan_iter("celery-task-meta-*"))


@pytest.fixture
def small_jobs(settings: Settings, redis_server: Any) -> RerankClient:
    """A client that splits records into jobs of 3 documents."""
    return RerankClient(redis_server.url, settings=settings.model_copy(update={"bulk_job_documents": 3}))


def test_rank_many_yields_every_record_with_ids_and_the_interactive_scores(
    small_jobs: RerankClient, client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    records = [
        {
            "id": f"q{i}",
            "query": f"query {i}",
            "documents": [{"id": f"d{i}-{j}", "text": t} for j, t in enumerate(docs)],
        }
        for i, docs in enumerate(fresh(n) for n in (1, 5, 7, 3))
    ]
    results = list(small_jobs.rank_many(records, model=MODEL, top_n=4, max_in_flight=2))

    assert sorted(r.id for r in results) == ["q0", "q1", "q2", "q3"]
    for result in results:
        record = records[result.position]
        assert result.ok and result.id == record["id"]
        texts = [doc["text"] for doc in record["documents"]]
        expected = client.rank(record["query"], texts, model=MODEL, top_n=4, cache=False)
        assert [r.index for r in result.results] == [e.index for e in expected]
        assert [r.id for r in result.results] == [record["documents"][e.index]["id"] for e in expected]
        assert [r.score for r in result.results] == pytest.approx([e.score for e in expected], abs=BATCH_TOLERANCE)
        assert result.pairs == len(texts)


def test_ordered_results_follow_the_input_and_plain_strings_have_no_ids(
    client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    records = [BulkRecord(id=i, query=f"q {i}", documents=fresh(2 + i % 3)) for i in range(12)]
    results = list(client.rank_many(records, model=MODEL, ordered=True, max_in_flight=3))
    assert [r.id for r in results] == list(range(12))
    assert all(r.ok and all(doc.id is None for doc in r.results) for r in results)


def test_bad_records_fail_alone_with_their_reason(client: RerankClient, workers: dict[str, WorkerProcess]) -> None:
    too_long = "x" * (client.settings.max_document_chars + 1)
    records: list[Any] = [
        {"id": "good", "query": "q", "documents": fresh(2)},
        {"id": "no-query", "documents": ["a"]},
        {"id": "long", "query": "q", "documents": ["fine", too_long]},
        ["not", "an", "object"],
        ValueError("Expecting value: line 1 column 1 (char 0)"),
        {"id": "no-text", "query": "q", "documents": [{"id": "d"}]},
        {"id": "also-good", "query": "q", "documents": fresh(1)},
    ]
    results = {r.position: r for r in client.rank_many(records, model=MODEL)}

    assert [results[i].ok for i in range(len(records))] == [True, False, False, False, False, False, True]
    assert "query" in (results[1].error or "") and results[1].id == "no-query"
    assert "documents[1]" in (results[2].error or "") and str(client.settings.max_document_chars) in (
        results[2].error or ""
    )
    assert results[3].id is None and "object" in (results[3].error or "")
    assert "Expecting value" in (results[4].error or "")
    assert "documents[0].text" in (results[5].error or "")


def test_a_model_failure_fails_its_record_and_the_run_goes_on(client: RerankClient, faulty_model: str) -> None:
    """The faulty worker runs out of memory on any pair over 24 tokens, on CPU: the job fails."""
    records = [
        {"id": "short", "query": "q", "documents": fresh(2, words=2)},
        {"id": "long", "query": "q", "documents": fresh(1, words=2) + fresh(1, words=60)},
        {"id": "short-too", "query": "q", "documents": fresh(3, words=2)},
    ]
    results = {r.id: r for r in client.rank_many(records, model=faulty_model)}
    assert results["short"].ok and results["short-too"].ok
    assert not results["long"].ok and "out of memory" in (results["long"].error or "")


def test_in_flight_jobs_and_records_read_are_bounded_and_results_do_not_linger(
    small_jobs: RerankClient, workers: dict[str, WorkerProcess], redis_server: Any
) -> None:
    pulled = []

    def records() -> Any:  # a stream: counts how far rank_many has read
        for i in range(6):
            pulled.append(i)
            yield {"id": i, "query": "q", "documents": fresh(7)}  # 3 jobs of at most 3 documents

    before = result_keys(redis_server.url)
    results: list[RecordResult] = []
    waits = threading.Semaphore(0)  # released each time rank_many has sent all it may and waits
    with paused(small_jobs, MODEL, ("bulk",)):
        runner = threading.Thread(
            target=lambda: results.extend(
                small_jobs.rank_many(records(), model=MODEL, max_in_flight=4, on_wait=waits.release)
            )
        )
        runner.start()
        assert waits.acquire(timeout=60) and waits.acquire(timeout=60)  # two rounds of waiting, no more sent
        assert depth(redis_server.url, MODEL, "bulk") == 4
        assert len(pulled) == 2  # 4 jobs need 2 records; nothing is read ahead of need
    runner.join(60)
    assert not runner.is_alive()
    assert sorted(r.id for r in results) == list(range(6)) and all(r.ok for r in results)
    assert result_keys(redis_server.url) == before


def test_a_worker_takes_interactive_jobs_off_redis_before_queued_bulk_jobs(
    client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    records = [{"id": i, "query": "bulk", "documents": fresh(2)} for i in range(6)]
    results: list[RecordResult] = []
    with paused(client, MODEL, ("interactive", "bulk")):
        runner = threading.Thread(
            target=lambda: results.extend(client.rank_many(records, model=MODEL, max_in_flight=6))
        )
        runner.start()
        wait_until(lambda: depth(client.settings.redis_url, MODEL, "bulk") == 6)
        urgent = [client.submit("urgent", fresh(2), model=MODEL) for _ in range(3)]
        log_mark = len(workers[MODEL].log())
    assert all(handle.result(timeout=60).results for handle in urgent)
    runner.join(60)
    assert sorted(r.id for r in results) == list(range(6))
    received = re.findall(r"Task rerankq\.rerank\[([0-9a-f-]+)\] received", workers[MODEL].log()[log_mark:])
    assert set(received[:3]) == {handle.id for handle in urgent}, "bulk jobs were taken before interactive ones"


def test_an_interactive_job_waits_behind_at_most_one_bulk_batch(
    client: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    """Bulk jobs fill the worker's batcher (8 forward passes' worth); an interactive job that
    arrives then runs after the forward pass in progress, not after the bulk work pending."""
    model = "all-minilm-l6-v2"  # real weights: forward passes take long enough to queue behind
    records = [{"id": i, "query": "bulk", "documents": fresh(64, words=40)} for i in range(6)]
    results: list[RecordResult] = []
    runner = threading.Thread(target=lambda: results.extend(client.rank_many(records, model=model, max_in_flight=4)))
    runner.start()
    # once a bulk job has come back, the worker holds the next ones, tokenized, in its batcher
    wait_until(lambda: depth(client.settings.redis_url, model, "bulk") == 0 and len(results) >= 1, timeout=120)
    answer = client.submit("urgent", fresh(20, words=40), model=model).result(timeout=120)
    bulk_running = len(results) < len(records)
    runner.join(120)
    assert bulk_running and len(results) == len(records) and all(r.ok for r in results)
    assert answer.stats.pairs == 20 and answer.stats.waited_batches <= 1


def test_a_second_run_is_answered_from_the_cache_with_the_same_scores(
    small_jobs: RerankClient, workers: dict[str, WorkerProcess]
) -> None:
    records = [{"id": i, "query": "cached?", "documents": fresh(5)} for i in range(4)]
    first = {r.id: r for r in small_jobs.rank_many(records, model=MODEL)}
    second = {r.id: r for r in small_jobs.rank_many(records, model=MODEL)}
    assert all(r.cache_hits == 0 for r in first.values())
    assert all(r.cache_hits == r.pairs == 5 for r in second.values())
    for record_id, result in second.items():
        assert [d.score for d in result.results] == pytest.approx([d.score for d in first[record_id].results])
