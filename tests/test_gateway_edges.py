"""Auth, operational endpoints, bad input and overload: every status code the gateway promises,
each a JSON error naming what was wrong, and nothing enqueued for a refused request."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from gateway_support import AUTH, HASHED_KEY, MAX_BODY_BYTES, MAX_DOCUMENTS, PLAIN_KEY, PausedModel, app_client
from prometheus_client import REGISTRY

from rerankq import InvalidRequest, RerankClient
from rerankq.core.constants import JOB_KEY_PREFIX, queue_name
from rerankq.gateway.server import UnsafeBind, check_bind
from rerankq.testing.local_redis import free_port
from rerankq.testing.processes import GatewayProcess
from rerankq.testing.waiting import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
QUERY = "what do cats eat"
DOCS = ["Cats eat meat and fish.", "The stock market fell today."]
ENDPOINT_BODIES = {
    "/v1/rerank": {"query": QUERY, "documents": DOCS},
    "/v2/rerank": {"query": QUERY, "documents": DOCS},
    "/rerank": {"query": QUERY, "texts": DOCS},
    "/v1/jobs": {"query": QUERY, "documents": DOCS},
}


@pytest.fixture
def http(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60)


@pytest.fixture
def jobs_created(redis_server) -> Callable[[], int]:
    """How many jobs have been submitted so far (their ledger markers)."""
    r = redis.Redis.from_url(redis_server.url)
    return lambda: sum(1 for _ in r.scan_iter(f"{JOB_KEY_PREFIX}*", count=1000))


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_type"] == error_type and body["error"] == body["message"] and body["message"]
    return body


# --- auth -------------------------------------------------------------------------------------


def test_requests_without_a_valid_key_are_refused(gateway: GatewayProcess) -> None:
    anonymous = httpx.Client(base_url=gateway.url, timeout=30)
    for path, body in ENDPOINT_BODIES.items():
        response = anonymous.post(path, json=body)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {PLAIN_KEY}"}, {"Authorization": ""}):
        assert_error(anonymous.get("/v1/models", headers=headers), 401, "unauthorized")
    assert_error(anonymous.get("/metrics"), 401, "unauthorized")


def test_plain_and_hashed_keys_are_accepted(gateway: GatewayProcess) -> None:
    for key in (PLAIN_KEY, HASHED_KEY):
        response = httpx.post(
            f"{gateway.url}/v1/rerank", json=ENDPOINT_BODIES["/v1/rerank"], headers={"Authorization": f"bearer {key}"}
        )
        assert response.status_code == 200


def test_health_probes_are_open(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200 and "tiny-bert" in ready.json()["served"] and ready.json()["workers"] >= 1


def test_keys_never_reach_the_log(http: httpx.Client, gateway: GatewayProcess) -> None:
    http.post("/v1/rerank", json=ENDPOINT_BODIES["/v1/rerank"])
    httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": "Bearer a-wrong-key-123"})
    log = gateway.log()
    assert "POST /v1/rerank" in log  # the access log is on
    assert PLAIN_KEY not in log and HASHED_KEY not in log and "a-wrong-key-123" not in log


def test_no_keys_means_loopback_only_unless_insecure() -> None:
    check_bind("127.0.0.1", have_keys=False, insecure=False)
    check_bind("::1", have_keys=False, insecure=False)
    check_bind("0.0.0.0", have_keys=True, insecure=False)
    check_bind("0.0.0.0", have_keys=False, insecure=True)
    for host in ("0.0.0.0", "10.1.2.3", "gateway.internal"):
        with pytest.raises(UnsafeBind, match="RERANKQ_API_KEYS"):
            check_bind(host, have_keys=False, insecure=False)
    env = {k: v for k, v in os.environ.items() if k != "RERANKQ_API_KEYS"}
    cli = [sys.executable, "-m", "rerankq", "gateway", "--host", "0.0.0.0", "--port", str(free_port())]
    refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "refusing to listen on 0.0.0.0 without API keys" in refused.stderr


# --- operational endpoints ----------------------------------------------------------------------


def test_models_lists_lanes_workers_and_aliases(http: httpx.Client) -> None:
    listing = http.get("/v1/models").json()
    models = {m["name"]: m for m in listing["models"]}
    assert listing["default"] == "tiny-bert"
    assert models["tiny-bert"]["lanes"]["interactive"]["workers"] >= 1 and models["tiny-bert"]["devices"] == ["cpu"]
    assert models["tiny-bert"]["aliases"] == ["rerank-english-v3.0"]
    assert models["bge-reranker-v2-m3"]["source"] == "BAAI/bge-reranker-v2-m3"
    assert models["bge-reranker-v2-m3"]["lanes"]["interactive"]["workers"] == 0


def test_metrics_count_requests_by_route_and_status(http: httpx.Client) -> None:
    http.post("/v1/rerank", json=ENDPOINT_BODIES["/v1/rerank"])
    http.get("/v1/jobs/no-such-job")
    wanted = (
        'rerankq_gateway_requests_total{endpoint="/v1/rerank",method="POST",status="200"}',
        'rerankq_gateway_requests_total{endpoint="/v1/jobs/{job_id}",method="GET",status="404"}',
        "rerankq_gateway_request_seconds_bucket",
    )
    # a request is counted once its answer has gone out: the next scrape may come first
    wait_until(lambda: all(line in http.get("/metrics").text for line in wanted), 10)


async def test_readiness_means_a_worker_for_each_ready_model_or_for_any(workers: dict) -> None:
    """Not the default model's alone: a gateway serving other models is ready (RERANKQ_READY_MODELS
    empty), and one told which models it needs is ready only when each has a live worker."""
    async with app_client(default_model="bge-reranker-v2-m3") as gateway:
        assert (await gateway.get("/readyz")).status_code == 200  # no worker for the default, others live
    async with app_client(ready_models=["tiny-bert", "bge-reranker-v2-m3"]) as gateway:
        response = await gateway.get("/readyz")
    assert response.status_code == 503 and response.json()["reason"] == "no live worker serves bge-reranker-v2-m3"


async def test_the_gateway_page_says_what_readiness_answers(workers: dict) -> None:
    """docs/gateway.md's /readyz row names the fields the endpoint answers with and the setting it
    reads (it once promised a worker for RERANKQ_DEFAULT_MODEL, which the code never required)."""
    async with app_client(default_model="bge-reranker-v2-m3") as gateway:
        ready = (await gateway.get("/readyz")).json()
    row = next(line for line in (ROOT / "docs" / "gateway.md").read_text().splitlines() if "`GET /readyz`" in line)
    assert all(f'"{field}"' in row or f"`{field}`" in row for field in ready if field != "status"), row
    assert "RERANKQ_READY_MODELS" in row and "RERANKQ_DEFAULT_MODEL" not in row


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/rerank", {"documents": DOCS}, "query"),
        ("/v1/rerank", {"query": QUERY, "documents": "not a list"}, "documents"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
        ("/rerank", {"query": QUERY, "texts": [1, 2]}, "texts[0]"),
        ("/rerank", {"query": QUERY, "texts": DOCS, "truncation_direction": "up"}, "truncation_direction"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 0}, "max_chunks_per_doc"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "max_tokens_per_doc": "many"}, "max_tokens_per_doc"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "chunk_tokens": 32, "chunk_overlap": 32}, "chunk_overlap"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "aggregate": "median"}, "aggregate"),
        ("/v1/rerank", {"query": "   ", "documents": DOCS}, "query"),
        ("/v1/jobs", {"query": QUERY, "documents": [{"title": "no text"}]}, "documents[0].text"),
    ],
)
def test_schema_errors_are_422_naming_the_field(
    http: httpx.Client, jobs_created: Callable[[], int], path: str, body: dict, field: str
) -> None:
    before = jobs_created()
    assert assert_error(http.post(path, json=body), 422, "validation")["field"] == field
    assert jobs_created() == before


def test_malformed_json_is_422(http: httpx.Client) -> None:
    response = http.post("/v1/rerank", content=b'{"query": ', headers={"Content-Type": "application/json"})
    assert_error(response, 422, "validation")


INVISIBLE_TEXTS = {"spaces": "   ", "zero-width": "\u200b", "mixed": "\t\u200b\u2060 \n"}


@pytest.mark.parametrize("text", INVISIBLE_TEXTS.values(), ids=INVISIBLE_TEXTS.keys())
@pytest.mark.parametrize("field", ["query", "instruction"])
async def test_text_without_visible_characters_is_422_saying_what_the_sdk_says(
    client: RerankClient, jobs_created: Callable[[], int], field: str, text: str
) -> None:
    """The schema's pattern (kept for the OpenAPI document) is 300 characters of regex; the answer
    is the SDK's own short sentence for the same text, on every shape."""
    sdk_options = {"query": text} if field == "query" else {"query": QUERY, "instruction": text}
    with pytest.raises(InvalidRequest) as sdk:
        client.build(sdk_options.pop("query"), DOCS, **sdk_options)
    before = jobs_created()
    async with app_client() as gateway:
        for path, body in ENDPOINT_BODIES.items():
            answer = assert_error(await gateway.post(path, json=body | {field: text}), 422, "validation")
            assert (answer["field"], answer["message"]) == (field, str(sdk.value)), path
            assert len(answer["message"]) < 120 and "\\u" not in answer["message"]
    assert jobs_created() == before


async def test_a_near_miss_of_a_model_name_is_404_suggesting_the_name(jobs_created: Callable[[], int]) -> None:
    before = jobs_created()
    async with app_client() as gateway:
        body = {"model": "all-MiniLM-L6-v2", "query": QUERY, "documents": DOCS}
        answer = assert_error(await gateway.post("/v1/rerank", json=body), 404, "unknown_model")
    assert "(did you mean 'all-minilm-l6-v2'?)" in answer["message"]
    assert answer["did_you_mean"] == "all-minilm-l6-v2" and "all-minilm-l6-v2" in answer["known_models"]
    assert answer["field"] == "model" and jobs_created() == before


async def test_the_hub_id_of_a_manifests_weights_is_served_by_its_version(workers: dict) -> None:
    body = {"model": "sentence-transformers/all-MiniLM-L6-v2", "query": QUERY, "documents": DOCS}
    async with app_client() as gateway:
        response = await gateway.post("/v2/rerank", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["X-Rerankq-Model"] == "all-minilm-l6-v2"


def test_size_limits_are_413_naming_the_limit(http: httpx.Client, jobs_created: Callable[[], int]) -> None:
    before = jobs_created()
    too_many = assert_error(
        http.post("/v1/rerank", json={"query": QUERY, "documents": ["d"] * (MAX_DOCUMENTS + 1)}), 413, "too_large"
    )
    assert too_many["field"] == "documents" and str(MAX_DOCUMENTS) in too_many["limit"]
    too_long = assert_error(http.post("/rerank", json={"query": QUERY, "texts": ["x" * 100_001]}), 413, "too_large")
    assert too_long["field"] == "texts[0]" or too_long["field"] == "documents[0]"
    huge = {"query": QUERY, "documents": ["y" * 60_000] * 5}
    declared = assert_error(http.post("/v1/rerank", json=huge), 413, "too_large")
    assert declared["field"] == "body" and str(MAX_BODY_BYTES) in declared["limit"]

    def streamed() -> Iterator[bytes]:  # no Content-Length: cut off while it arrives
        yield b'{"query": "q", "documents": ['
        for _ in range(40):
            yield b'"' + b"z" * 10_000 + b'",'
        yield b'"end"]}'

    chunked = http.post("/v1/rerank", content=streamed(), headers={"Content-Type": "application/json"})
    assert_error(chunked, 413, "too_large")
    assert jobs_created() == before


def test_unknown_routes_and_methods_answer_json(http: httpx.Client) -> None:
    assert_error(http.get("/v3/rerank"), 404, "not_found")
    assert http.get("/v1/rerank").status_code == 405 and http.get("/v1/rerank").json()["error_type"] == "http"


# --- overload -----------------------------------------------------------------------------------


def queue_depth(redis_server, model: str) -> int:
    return int(redis.Redis.from_url(redis_server.url).llen(queue_name(model)))


def fresh_query() -> str:
    """A query never seen, so the result cache cannot answer and the job must queue."""
    return f"{QUERY} {uuid.uuid4()}"


async def test_a_full_lane_is_429_with_retry_after(
    paused_model: PausedModel, client: RerankClient, redis_server
) -> None:
    queued = [client.submit(fresh_query(), DOCS, model=paused_model.name) for _ in range(2)]
    async with app_client(max_queue_depth=2, retry_after_s=3) as gateway:
        for path, body in ENDPOINT_BODIES.items():
            response = await gateway.post(path, json=body | {"model": paused_model.name})
            assert_error(response, 429, "queue_full")
            assert response.headers["retry-after"] == "3"
    assert queue_depth(redis_server, paused_model.name) == 2  # nothing more was enqueued
    paused_model.resume()
    assert all(handle.result(timeout=30).model == paused_model.name for handle in queued)


async def test_a_slow_job_is_504_carrying_its_id(paused_model: PausedModel, client: RerankClient) -> None:
    async with app_client(gateway_timeout_s=0.5) as gateway:
        body = {"model": paused_model.name, "query": fresh_query(), "documents": DOCS}
        response = await gateway.post("/v1/rerank", json=body)
        body = assert_error(response, 504, "timeout")
        assert body["status"] == "pending" and body["status_url"].endswith(body["job_id"])
        paused_model.resume()
        state = (await gateway.get(f"/v1/jobs/{body['job_id']}")).json()
        for _ in range(200):
            if state["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
            state = (await gateway.get(f"/v1/jobs/{body['job_id']}")).json()
    assert state["status"] == "succeeded"  # the client can still collect it


async def test_a_gateway_at_its_waiting_limit_is_503_and_enqueues_nothing(
    paused_model: PausedModel, redis_server, client: RerankClient
) -> None:
    async with app_client(max_waiting_requests=1, gateway_timeout_s=5) as gateway:
        body = {"model": paused_model.name, "query": fresh_query(), "documents": DOCS}
        first = asyncio.create_task(gateway.post("/v1/rerank", json=body))
        while REGISTRY.get_sample_value("rerankq_gateway_waiting_requests") != 1:  # the first one waits
            await asyncio.sleep(0.02)
        response = await gateway.post("/v2/rerank", json=body | {"query": fresh_query()})
        assert_error(response, 503, "overloaded")
        assert response.headers["retry-after"]
        assert queue_depth(redis_server, paused_model.name) == 1
        paused_model.resume()
        assert (await first).status_code == 200


async def test_no_worker_for_a_known_model_is_503_naming_it(jobs_created: Callable[[], int]) -> None:
    before = jobs_created()
    async with app_client() as gateway:
        body = {"model": "bge-reranker-v2-m3", "query": QUERY, "documents": DOCS}
        response = await gateway.post("/v1/rerank", json=body)
    assert assert_error(response, 503, "no_workers")["model"] == "bge-reranker-v2-m3"
    assert jobs_created() == before


async def test_no_worker_for_the_default_model_names_the_setting(jobs_created: Callable[[], int]) -> None:
    """A request that names no model (every TEI-shaped one) goes to RERANKQ_DEFAULT_MODEL: its 503
    says so, since the fix is often that setting, not another worker."""
    before = jobs_created()
    async with app_client(default_model="bge-reranker-v2-m3") as gateway:  # a known model no test worker serves
        unnamed = await gateway.post("/rerank", json={"query": QUERY, "texts": DOCS})
        named = await gateway.post(
            "/v1/rerank", json={"model": "qwen3-reranker-0.6b", "query": QUERY, "documents": DOCS}
        )
    assert "RERANKQ_DEFAULT_MODEL" in assert_error(unnamed, 503, "no_workers")["message"]
    assert "RERANKQ_DEFAULT_MODEL" not in assert_error(named, 503, "no_workers")["message"]
    assert jobs_created() == before


async def test_a_job_the_worker_fails_is_502_with_its_reason(workers: dict, settings) -> None:
    """A gateway configured with a larger document limit than its workers: the worker's own
    re-check fails the job, and the client learns why."""
    documents = [f"document {i}" for i in range(settings.max_documents + 1)]
    async with app_client(max_documents=settings.max_documents * 2) as gateway:
        response = await gateway.post("/v1/rerank", json={"query": fresh_query(), "documents": documents})
    body = assert_error(response, 502, "job_failed")
    assert body["job_id"] and f"at most {settings.max_documents} documents" in body["message"]
