"""Versioned records between releases: a job recorded by release 0.1.0 is still served, fields of a
newer minor format are read past, a newer major is refused with both versions and the upgrade
order (the job fails, the worker serves the next one), and alias records follow the same rules."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import redis
from gateway_support import app_client
from worker_support import send_raw

from rerankq import IncompatibleFormat, JobFailed, RerankClient
from rerankq.core.constants import ALIASES_KEY, REJECTED_KEY, queue_name
from rerankq.core.contract import RerankResult, new_job_id, read_result
from rerankq.core.wire_format import JOB_FORMAT, RecordFormat
from rerankq.producer import job_ledger
from rerankq.testing.processes import WorkerProcess

# A job message exactly as release 0.1.0's SDK left it on Redis (kombu envelope, base64 body),
# before records carried a format: query "what is the capital of France", 3 documents, top_n 2.
RECORDED_JOB = Path(__file__).parent / "fixtures" / "job-message-rerankq-0.1.0.json"
MODEL = "tiny-bert"
QUERY = "what is the capital of France"
DOCUMENTS = ["Apples grow on trees.", "Paris is the capital of France.", "Redis keeps data in memory."]


def send_as_another_release(client: RerankClient, payload: dict[str, Any]) -> str:
    """Publish a job payload as a producer of another release would, bypassing this SDK's model."""
    return send_raw(client, payload, queue_name(MODEL), MODEL)


def payload(client: RerankClient, **fields: Any) -> dict[str, Any]:
    job = client.build(QUERY, DOCUMENTS, model=MODEL, cache=False)
    return job.model_dump() | {"job_id": new_job_id()} | fields


def reference(client: RerankClient, top_n: int | None = None) -> list[tuple[int, float]]:
    results = client.rank(QUERY, DOCUMENTS, model=MODEL, top_n=top_n, cache=False, timeout=60)
    return [(result.index, result.score) for result in results]


def as_pairs(result: RerankResult) -> list[tuple[int, float]]:
    return [(ranked.index, ranked.score) for ranked in result.results]


def assert_same_ranking(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [index for index, _ in got] == [index for index, _ in want]
    assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-5)


# readers of one record kind, without Redis


def test_a_record_without_a_format_reads_as_1_0_and_a_newer_minor_is_noted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = RecordFormat("job message", "1.0", "upgrade every worker first")
    reader.check({"job_id": "a"}, {"job_id", "format"})  # today's records carry no format: 1.0
    with caplog.at_level(logging.WARNING, logger="rerankq.wire_format"):
        for _ in range(3):
            reader.check({"format": "1.4", "job_id": "a", "priority_hint": 2}, {"job_id", "format"})
    notes = [record.getMessage() for record in caplog.records]
    assert len(notes) == 1 and "1.4" in notes[0] and "priority_hint" in notes[0]


@pytest.mark.parametrize("found", ["2.0", "0.9", "v2", 2])
def test_another_major_or_no_version_at_all_is_refused_naming_both(found: Any) -> None:
    with pytest.raises(IncompatibleFormat) as refused:
        JOB_FORMAT.check({"format": found, "job_id": "a"}, {"job_id", "format"})
    assert str(found) in str(refused.value) and JOB_FORMAT.version in str(refused.value)


def test_a_result_of_a_newer_major_is_refused_and_of_a_newer_minor_read() -> None:
    result = RerankResult(job_id="j", model=MODEL, device="cpu", results=[]).model_dump()
    assert read_result(result | {"format": "1.3", "energy_joules": 0.2}).job_id == "j"
    with pytest.raises(IncompatibleFormat, match="upgrade the producers and gateways before the workers"):
        read_result(result | {"format": "2.0"})


# jobs through a real worker


@pytest.mark.slow
def test_a_job_recorded_by_release_0_1_0_is_still_served(
    workers: dict[str, WorkerProcess], client: RerankClient, redis_server: Any
) -> None:
    message = json.loads(RECORDED_JOB.read_bytes())
    job_id = message["headers"]["id"]
    job_ledger.record_submitted(
        client.app.backend.client, job_id, MODEL, "interactive", client.settings
    )  # as 0.1.0 did
    redis.Redis.from_url(redis_server.url).lpush(queue_name(MODEL), RECORDED_JOB.read_bytes())
    result = client.job(job_id).result(timeout=60)
    assert_same_ranking(as_pairs(result), reference(client, top_n=2))
    assert [ranked.document for ranked in result.results] == [DOCUMENTS[i] for i, _ in reference(client, top_n=2)]


@pytest.mark.slow
def test_a_job_with_fields_of_a_newer_minor_is_served_and_noted_once(
    workers: dict[str, WorkerProcess], client: RerankClient
) -> None:
    newer = {"format": "1.7", "instruction_v2": "Given a web search query", "sla_ms": 50}
    job_ids = [send_as_another_release(client, payload(client, **newer)) for _ in range(2)]
    for job_id in job_ids:
        assert_same_ranking(as_pairs(client.job(job_id).result(timeout=60)), reference(client))
    assert workers[MODEL].log().count("job message format 1.7 is newer") == 1


@pytest.mark.slow
def test_a_job_of_a_newer_major_fails_with_the_reason_and_the_worker_serves_the_next(
    workers: dict[str, WorkerProcess], client: RerankClient, redis_server: Any
) -> None:
    job_id = send_as_another_release(
        client, payload(client, format="2.0", documents=[{"text": doc} for doc in DOCUMENTS])
    )
    with pytest.raises(JobFailed) as failed:
        client.job(job_id).result(timeout=60)
    reason = failed.value.reason
    assert "job message format 2.0" in reason and f"reads {JOB_FORMAT.version}" in reason
    assert "upgrade every worker before the producers and gateways" in reason
    rejected = [json.loads(entry) for entry in redis.Redis.from_url(redis_server.url).lrange(REJECTED_KEY, 0, 20)]
    assert any(entry["kind"] == "incompatible_format" and "2.0" in entry["reason"] for entry in rejected)
    assert workers[MODEL].process.poll() is None  # the worker lives and serves the next job
    assert len(reference(client)) == len(DOCUMENTS)


# alias records, read by producers


def store_alias(redis_server: Any, alias: str, record: dict[str, Any]) -> None:
    redis.Redis.from_url(redis_server.url).hset(ALIASES_KEY, alias, json.dumps(record))


@pytest.mark.slow
def test_an_alias_record_with_fields_of_a_newer_minor_still_routes(
    workers: dict[str, WorkerProcess], redis_server: Any
) -> None:
    record = {"format": "1.2", "targets": {MODEL: 100}, "set_at": 0.0, "note": "", "sticky_by": "user"}
    store_alias(redis_server, "wire-newer-minor", record)
    with RerankClient(redis_server.url) as fresh:  # reads the alias table on first use
        result = fresh.submit(QUERY, DOCUMENTS, model="wire-newer-minor", cache=False).result(timeout=60)
    assert (result.model, result.alias) == (MODEL, "wire-newer-minor")


def test_an_alias_record_of_a_newer_major_is_refused_not_routed_elsewhere(redis_server: Any) -> None:
    record = {"format": "2.0", "routes": [{"model": MODEL, "share": 1.0}]}
    store_alias(redis_server, "wire-newer-major", record)
    queue = redis.Redis.from_url(redis_server.url)
    waiting = queue.llen(queue_name(MODEL))
    with RerankClient(redis_server.url) as fresh, pytest.raises(IncompatibleFormat, match=r"alias record format 2\.0"):
        fresh.submit(QUERY, DOCUMENTS, model="wire-newer-major")
    assert queue.llen(queue_name(MODEL)) == waiting  # nothing enqueued


def test_a_default_alias_of_a_newer_major_is_refused_not_replaced_by_the_default_model(redis_server: Any) -> None:
    store_alias(redis_server, "default", {"format": "2.0", "targets": {MODEL: 100}})
    try:
        with RerankClient(redis_server.url) as fresh, pytest.raises(IncompatibleFormat):
            fresh.submit(QUERY, DOCUMENTS)  # no model: the default alias, never RERANKQ_DEFAULT_MODEL behind it
    finally:
        redis.Redis.from_url(redis_server.url).hdel(ALIASES_KEY, "default")


async def test_the_gateway_answers_503_for_an_alias_it_cannot_read(redis_server: Any) -> None:
    store_alias(redis_server, "wire-newer-major-gw", {"format": "3.1", "targets": {MODEL: 100}})
    async with app_client() as gateway:
        response = await gateway.post(
            "/v1/rerank", json={"model": "wire-newer-major-gw", "query": QUERY, "documents": DOCUMENTS}
        )
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.json()["error_type"] == "incompatible_format" and "3.1" in response.json()["message"]
