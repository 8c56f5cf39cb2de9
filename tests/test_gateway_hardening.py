"""What an API fuzzer and a red-team pass found, each against a real gateway on real Redis: work
before authentication, unbounded expansion, 500s when echoing input, a racy queue limit, protocol
details (Retry-After, Allow, half-sent requests) and probes counted as traffic."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
import redis
from gateway_support import AUTH, GATEWAY_ENV, PausedModel, app_client
from prometheus_client import REGISTRY

from rerankq.core.constants import queue_keys, queue_name
from rerankq.testing.processes import GatewayProcess, start_gateway, stop_process

pytestmark = pytest.mark.slow

QUERY = "what do cats eat"


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[bytes, socket.socket]:
    """Send a request head (and maybe part of a body) on a fresh socket; returns what came back first."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30)
    connection.sendall(head + body)
    return connection.recv(65536), connection


def queue_depth(redis_url: str, model: str) -> int:
    client = redis.Redis.from_url(redis_url)
    return sum(int(client.llen(key)) for key in queue_keys(queue_name(model)))


# 1 --- authentication comes before any work on the body ------------------------------------------


def test_an_unauthenticated_request_is_refused_before_its_body_is_read(gateway: GatewayProcess) -> None:
    """A 30 MB body announced, none sent: the 401 comes from the headers alone."""
    head = b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 30000000\r\n\r\n"
    answer, connection = raw_request(gateway.url, head, b'{"query": "')
    connection.close()
    assert answer.startswith(b"HTTP/1.1 401") and b"www-authenticate: bearer" in answer.lower()


def test_unauthenticated_invalid_json_is_401_not_422(gateway: GatewayProcess) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/rerank", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401 and response.json()["error_type"] == "unauthorized"


# 2 --- every list is bounded, before any work --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # 200,000 rank_fields over 1,000 object documents: a 1 MB body once held the loop for 40 s
        ({"documents": [{"text": "a", "title": "t"}] * 1000, "rank_fields": ["a"] * 200_000}, "rank_fields"),
        ({"documents": [{f"f{i}": "v" for i in range(300)} | {"text": "a"}]}, "documents[0]"),
        ({"documents": ["x"] * 1001}, "documents"),
    ],
)
async def test_an_oversized_list_is_413_naming_it(workers: dict, body: dict[str, Any], field: str) -> None:
    async with app_client() as gateway:  # default limits: 32 MiB bodies, 1,000 documents
        response = await gateway.post("/v1/rerank", json={"query": QUERY} | body)
    assert response.status_code == 413 and response.json()["field"] == field, response.text


async def test_no_rank_fields_at_all_is_422(workers: dict) -> None:
    async with app_client() as gateway:
        body = {"query": QUERY, "documents": [{"text": "a"}], "rank_fields": []}
        response = await gateway.post("/v1/rerank", json=body)
    assert response.status_code == 422 and response.json()["field"] == "rank_fields"


# 3 --- echoing input back never fails on output -----------------------------------------------------


def deeply_nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth):
        value = {"next": value}
    return value


@pytest.mark.parametrize(
    ("raw_body", "field"),
    [
        # a lone surrogate in a field that is not ranked, to be echoed with return_documents
        (
            '{"query": "cats", "return_documents": true, "documents": [{"text": "a", "note": "\\ud800"}]}',
            "documents[0].note",
        ),
        # a lone surrogate in rank_fields: even the 422 naming it must be sendable
        ('{"query": "cats", "documents": [{"text": "a"}], "rank_fields": ["\\udfff"]}', "rank_fields[0]"),
    ],
)
def test_text_utf8_cannot_carry_is_a_clean_422(http: httpx.Client, raw_body: str, field: str) -> None:
    response = http.post("/v1/rerank", content=raw_body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == field
    assert http.get("/healthz").status_code == 200  # the keep-alive connection still works


def test_a_value_nested_too_deep_is_413_and_the_connection_lives_on(http: httpx.Client) -> None:
    document = {"text": "a"} | deeply_nested(256)
    response = http.post("/v1/rerank", json={"query": QUERY, "documents": [document], "return_documents": True})
    assert response.status_code == 413 and response.json()["field"].startswith("documents[0].next")
    assert http.get("/healthz").status_code == 200


def test_echoed_non_ascii_text_comes_back_intact(http: httpx.Client) -> None:
    document = {"text": "猫は魚を食べる", "note": "é ☃ 🐈"}
    response = http.post("/v1/rerank", json={"query": "猫", "documents": [document], "return_documents": True})
    assert response.status_code == 200 and response.json()["results"][0]["document"] == document


# 4 --- the queue limit holds under concurrency -----------------------------------------------------


async def test_the_queue_limit_holds_under_hundreds_of_concurrent_submits(
    paused_model: PausedModel, redis_server: Any
) -> None:
    """300 concurrent POST /v1/jobs against a limit of 30 on a lane no worker drains: at most 30
    are accepted, the rest are 429, and the queue never holds more than 30."""
    before = queue_depth(redis_server.url, paused_model.name)
    async with app_client(max_queue_depth=before + 30, retry_after_s=1) as gateway:
        body = {"model": paused_model.name, "query": QUERY, "documents": ["a", "b"]}
        answers = await asyncio.gather(*(gateway.post("/v1/jobs", json=body | {"query": f"q{i}"}) for i in range(300)))
    statuses = sorted({answer.status_code for answer in answers})
    accepted = sum(answer.status_code == 202 for answer in answers)
    # never past the limit; a place reserved and not yet given back after its push counts twice
    # for a moment, so a burst may be refused a few places early (each told when to retry)
    assert statuses == [202, 429] and 10 <= accepted <= 30, (statuses, accepted)
    assert queue_depth(redis_server.url, paused_model.name) == before + accepted


# 5 --- protocol details --------------------------------------------------------------------------


async def test_every_503_and_504_says_when_to_retry(paused_model: PausedModel) -> None:
    async with app_client(gateway_timeout_s=0.3) as gateway:
        unserved = await gateway.post(
            "/v1/rerank", json={"model": "bge-reranker-v2-m3", "query": QUERY, "documents": ["a"]}
        )
        slow = await gateway.post("/v1/rerank", json={"model": paused_model.name, "query": QUERY, "documents": ["a"]})
    assert unserved.status_code == 503 and int(unserved.headers["Retry-After"]) > 0
    assert slow.status_code == 504 and int(slow.headers["Retry-After"]) > 0


def test_an_unserved_method_is_405_naming_every_served_one(http: httpx.Client) -> None:
    response = http.put("/v1/jobs/some-id")
    assert response.status_code == 405
    assert {method.strip() for method in response.headers["Allow"].split(",")} >= {"GET", "DELETE"}


def test_half_sent_requests_are_closed_after_the_head_timeout(tmp_path: Any, workers: dict) -> None:
    """A real gateway with a 1 s head timeout: 200 connections that send half a request head, and
    one that sends nothing, are all closed by the gateway; whole requests are served meanwhile."""
    env = GATEWAY_ENV | {"RERANKQ_GATEWAY_HEADER_TIMEOUT_S": "1"}
    gateway = start_gateway(tmp_path / "gateway.log", env=env)
    try:
        host, port = gateway.url.removeprefix("http://").split(":")
        stalled = [socket.create_connection((host, int(port)), timeout=30) for _ in range(201)]
        for connection in stalled[1:]:
            connection.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-")
        assert httpx.get(f"{gateway.url}/healthz").status_code == 200
        assert all(connection.recv(1024) == b"" for connection in stalled)  # closed by the gateway
    finally:
        stop_process(gateway.process)


def test_an_idle_keep_alive_connection_is_not_cut_by_the_head_timeout(tmp_path: Any, workers: dict) -> None:
    env = GATEWAY_ENV | {"RERANKQ_GATEWAY_HEADER_TIMEOUT_S": "1"}
    gateway = start_gateway(tmp_path / "gateway.log", env=env)
    try:
        with httpx.Client(base_url=gateway.url) as client:
            assert client.get("/healthz").status_code == 200
            time.sleep(1.5)  # idle longer than the head timeout, well inside the keep-alive (65 s)
            assert client.get("/healthz").status_code == 200
    finally:
        stop_process(gateway.process)


# 9 --- probes and scrapes are not traffic ------------------------------------------------------------


async def test_probes_and_scrapes_are_not_counted_as_requests() -> None:
    def counted(endpoint: str) -> float:
        return sum(
            sample.value
            for metric in REGISTRY.collect()
            if metric.name == "rerankq_gateway_requests"
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("endpoint") == endpoint
        )

    async with app_client(ready_models=["bge-reranker-v2-m3"]) as gateway:
        before = {path: counted(path) for path in ("/healthz", "/readyz", "/metrics", "/v1/models")}
        for path in ("/healthz", "/readyz", "/metrics", "/v1/models"):
            await gateway.get(path)
    assert {path: counted(path) - before[path] for path in before} == {
        "/healthz": 0,
        "/readyz": 0,
        "/metrics": 0,
        "/v1/models": 1,
    }


@pytest.fixture
def http(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60)
