"""Malformed and hostile bodies thrown at every endpoint (hypothesis): never a 5xx, always a JSON
error, and every job the gateway accepted finishes. Plus one process holding hundreds of
waiting requests at once."""

from __future__ import annotations

import asyncio
import json
import math
import re
import urllib.parse
import uuid
from typing import Any

import httpx
import pytest
import redis
from gateway_support import AUTH, PausedModel, wait_for_job
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rerankq.core.constants import queue_name
from rerankq.testing.processes import GatewayProcess

pytestmark = pytest.mark.slow

HOSTILE = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "\u200b\u200b", "\ud800", "a\udfffb", "\x1b[2J", "💥" * 50, "x" * 100_001]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    odd_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=20,
)
documents = st.one_of(
    st.lists(odd_text, max_size=60),
    st.lists(st.one_of(odd_text, st.fixed_dictionaries({"text": odd_text}), json_values), max_size=5),
    json_values,
)
FIELDS = {
    "model": st.one_of(st.just("tiny-bert"), st.just("default"), odd_text, json_values),
    "query": st.one_of(st.just("what do cats eat"), odd_text, json_values),
    "documents": documents,
    "texts": documents,
    "top_n": st.one_of(st.integers(-3, 100), json_values),
    "return_documents": json_values,
    "rank_fields": st.one_of(st.lists(odd_text, max_size=3), json_values),
    "raw_scores": json_values,
    "return_text": json_values,
    "truncate": json_values,
    "truncation_direction": st.one_of(st.sampled_from(["Right", "left", "up"]), json_values),
    "max_tokens_per_doc": json_values,
    "max_chunks_per_doc": st.one_of(st.integers(-2, 50), json_values),
    "long_documents": st.one_of(st.sampled_from(["truncate", "chunk", "split"]), json_values),
    "chunk_tokens": st.one_of(st.integers(-5, 600), json_values),
    "chunk_overlap": st.one_of(st.integers(-5, 600), json_values),
    "aggregate": st.one_of(st.sampled_from(["max", "mean", "first", "median"]), json_values),
    "max_length": st.one_of(st.integers(-5, 100_000), json_values),
    "callback_url": st.one_of(st.just("http://127.0.0.1:9/x"), odd_text, json_values),
    "unknown_field": json_values,
}
bodies = st.one_of(
    st.fixed_dictionaries({}, optional=FIELDS).map(lambda body: json.dumps(body).encode("utf-8", "surrogatepass")),
    json_values.map(lambda value: json.dumps(value).encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
)
POST_ENDPOINTS = ["/v1/rerank", "/v2/rerank", "/rerank", "/v1/jobs"]


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    body = response.json()  # always JSON
    if response.status_code >= 400:
        assert body["error_type"] and body["message"]


@pytest.fixture(scope="module")
def accepted_jobs() -> list[str]:
    return []


@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_hostile_bodies_never_cause_a_5xx(
    gateway: GatewayProcess, accepted_jobs: list[str], redis_server, path: str
) -> None:
    http = httpx.Client(base_url=gateway.url, headers=AUTH | {"Content-Type": "application/json"}, timeout=60)

    @HOSTILE
    @given(body=bodies)
    def throw(body: bytes) -> None:
        response = http.post(path, content=body)
        check_answer(response)
        if path == "/v1/jobs" and response.status_code == 202:
            accepted_jobs.append(response.json()["id"])

    throw()
    # nothing the gateway accepted is left behind
    for job_id in accepted_jobs:
        assert wait_for_job(http, job_id)["status"] == "succeeded"
    assert redis.Redis.from_url(redis_server.url).llen(queue_name("tiny-bert")) == 0


@HOSTILE
@given(job_id=st.text(min_size=1, max_size=200).filter(lambda s: s not in (".", "..")))
@example(job_id="/")  # once answered by a redirect (FastAPI's redirect_slashes), not JSON
def test_hostile_job_ids_never_cause_a_5xx(gateway: GatewayProcess, job_id: str) -> None:
    http = httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60)
    quoted = urllib.parse.quote(job_id.encode("utf-8", "surrogatepass"), safe="")
    for method in ("GET", "DELETE"):
        check_answer(http.request(method, f"/v1/jobs/{quoted}"))


def test_nan_and_infinity_are_refused(gateway: GatewayProcess) -> None:
    http = httpx.Client(base_url=gateway.url, headers=AUTH | {"Content-Type": "application/json"}, timeout=60)
    for number in (math.nan, math.inf):
        body = json.dumps({"query": "q", "documents": ["d"], "top_n": number}).encode()
        response = http.post("/v1/rerank", content=body)
        assert response.status_code == 422 and response.json()["field"] == "top_n"


async def test_one_gateway_process_holds_hundreds_of_waiting_requests(
    gateway: GatewayProcess, paused_model: PausedModel
) -> None:
    """300 requests wait at once in one gateway process (its worker is paused), then all are answered."""
    count = 300
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(base_url=gateway.url, headers=AUTH, timeout=120, limits=limits) as http:

        async def rerank(i: int) -> httpx.Response:
            body = {"model": paused_model.name, "query": f"query {i} {uuid.uuid4()}", "documents": ["a", "b"]}
            return await http.post("/v1/rerank", json=body)

        requests = [asyncio.create_task(rerank(i)) for i in range(count)]
        peak = 0
        while peak < count:
            peak = max(peak, await waiting_requests(http))
            await asyncio.sleep(0.1)
        paused_model.resume()
        responses: list[Any] = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [200] * count
    assert all(len(r.json()["results"]) == 2 for r in responses)


async def waiting_requests(http: httpx.AsyncClient) -> int:
    text = (await http.get("/metrics")).text
    match = re.search(r"^rerankq_gateway_waiting_requests (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0
