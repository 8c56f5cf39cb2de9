"""Named API keys shared by several apps: scopes, jobs that belong to a key, limits shared by
gateway replicas through Redis, a keys file reloaded while requests are in flight, and usage
(Cohere's billed units, per-key counters, `rerankq usage`, one audit line per request)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_support import PausedModel, app_client, await_job
from prometheus_client import REGISTRY

from rerankq.core.contract import new_job_id
from rerankq.core.settings import get_settings
from rerankq.gateway.keys import KeysFileError, load_ring
from rerankq.gateway.rate_limits import WINDOW_S
from rerankq.testing.processes import GatewayProcess, start_gateway, stop_process
from rerankq.testing.waiting import wait_until

QUERY = "what do cats eat"
DOCS = ["Cats eat meat and fish.", "The stock market fell today."]
KEYS = {name: f"rk-{name}-secret" for name in ("app-a", "app-b", "ops", "search-only", "limited")}


def entry(name: str, scopes: list[str], **limits: int) -> str:
    digest = hashlib.sha256(KEYS[name].encode()).hexdigest()
    lines = [f'[[keys]]\nname = "{name}"\nsha256 = "{digest}"\nscopes = {json.dumps(scopes)}']
    if limits:
        lines.append("[keys.limits]\n" + "\n".join(f"{limit} = {value}" for limit, value in limits.items()))
    return "\n".join(lines) + "\n"


def write_keys(path: Path, *entries: str, stamp: os.stat_result | None = None) -> Path:
    """Written whole, then renamed over the old file (as a careful operator or a config manager
    does); ``stamp``: with that file's size and modification time (padded with a comment)."""
    text = "".join(entries)
    if stamp is not None:
        text += "#" * (stamp.st_size - len(text) - 1) + "\n"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    if stamp is not None:
        os.utime(temporary, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    os.replace(temporary, path)
    return path


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return write_keys(
        tmp_path / "keys.toml",
        entry("app-a", ["rerank", "jobs"]),
        entry("app-b", ["rerank", "jobs"]),
        entry("ops", ["admin"]),
        entry("search-only", ["rerank"]),
        entry("limited", ["rerank", "jobs"], documents_per_request=3, queued_jobs=2),
    )


async def test_an_admin_endpoint_is_refused_to_a_rerank_key(keys_file: Path, workers: dict) -> None:
    async with app_client(api_keys_file=keys_file) as gateway:
        for path in ("/v1/models", "/metrics"):
            refused = await gateway.get(path, headers=auth("search-only"))
            assert refused.status_code == 403, refused.text
            assert refused.json()["error_type"] == "forbidden" and refused.json()["scope"] == "admin"
            assert (await gateway.get(path, headers=auth("ops"))).status_code == 200
        jobs = await gateway.post("/v1/jobs", json={"query": QUERY, "documents": DOCS}, headers=auth("search-only"))
        assert jobs.status_code == 403 and jobs.json()["scope"] == "jobs"
        denied = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}, headers=auth("ops"))
        assert denied.status_code == 403 and denied.json()["scope"] == "rerank"
        assert (await gateway.get("/v1/models", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_another_keys_job_is_404_exactly_as_a_job_that_never_was(keys_file: Path, workers: dict) -> None:
    async with app_client(api_keys_file=keys_file) as gateway:
        made = await gateway.post("/v1/jobs", json={"query": QUERY, "documents": DOCS}, headers=auth("app-a"))
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        wait_until_final = await await_job(gateway, job_id, 60, auth("app-a"))
        assert wait_until_final["status"] == "succeeded"
        never = new_job_id()  # made now, like theirs, and never submitted
        for method in ("GET", "DELETE"):
            theirs = await gateway.request(method, f"/v1/jobs/{job_id}", headers=auth("app-b"))
            unknown = await gateway.request(method, f"/v1/jobs/{never}", headers=auth("app-b"))
            assert theirs.status_code == unknown.status_code == 404
            assert theirs.json()["error_type"] == unknown.json()["error_type"] == "not_found"
            assert theirs.json()["message"].replace(job_id, never) == unknown.json()["message"]
        assert (await gateway.get(f"/v1/jobs/{job_id}", headers=auth("app-a"))).status_code == 200
        assert (await gateway.delete(f"/v1/jobs/{job_id}", headers=auth("app-a"))).status_code == 409  # finished


@pytest.mark.parametrize(("documents", "units"), [(1, 1), (100, 1), (101, 2)])
async def test_billed_search_units_follow_cohere_at_1_100_and_101_documents(
    keys_file: Path, workers: dict, documents: int, units: int
) -> None:
    query = f"{QUERY} {uuid.uuid4()}"  # scored afresh: the first answer's tokens are the model's
    body = {"query": query, "documents": [f"document {i} about cats" for i in range(documents)]}
    async with app_client(api_keys_file=keys_file, max_documents=200) as gateway:
        v1 = await gateway.post("/v1/rerank", json=body, headers=auth("app-a"))
        v2 = await gateway.post("/v2/rerank", json=body, headers=auth("app-a"))
        tei = await gateway.post("/rerank", json={"query": query, "texts": body["documents"]}, headers=auth("app-a"))
    for answer in (v1, v2):
        assert answer.status_code == 200, answer.text
        assert answer.json()["meta"]["billed_units"] == {"search_units": units}
    assert v1.json()["usage"]["total_tokens"] > 0  # the later two come from the result cache: 0 tokens read
    assert v2.json()["usage"]["total_tokens"] == 0 and tei.headers["X-Rerankq-Tokens"] == "0"
    assert tei.headers["X-Rerankq-Search-Units"] == str(units)


async def test_documents_per_request_is_a_413_naming_the_keys_limit(keys_file: Path, workers: dict) -> None:
    async with app_client(api_keys_file=keys_file) as gateway:
        body = {"query": QUERY, "documents": DOCS * 2}
        over = await gateway.post("/v1/rerank", json=body, headers=auth("limited"))
        assert over.status_code == 413 and over.json()["field"] == "documents"
        assert "at most 3 documents per request for key 'limited'" in over.json()["message"]
        assert (await gateway.post("/v1/rerank", json=body, headers=auth("app-a"))).status_code == 200


async def test_one_key_cannot_fill_the_queue_others_share(keys_file: Path, paused_model: PausedModel) -> None:
    body = {"model": paused_model.name, "query": QUERY, "documents": DOCS}
    async with app_client(api_keys_file=keys_file) as gateway:
        first = [await gateway.post("/v1/jobs", json=body, headers=auth("limited")) for _ in range(2)]
        assert [answer.status_code for answer in first] == [202, 202]
        third = await gateway.post("/v1/jobs", json=body, headers=auth("limited"))
        assert third.status_code == 429 and third.json()["error_type"] == "rate_limited", third.text
        assert third.headers["X-RateLimit-Limit"] == "2" and third.headers["Retry-After"]
        other = await gateway.post("/v1/jobs", json=body, headers=auth("app-b"))
        assert other.status_code == 202  # another key still gets in
        paused_model.resume()
        for answer in [*first, other]:
            job_id, key = answer.json()["id"], "app-b" if answer is other else "limited"
            assert (await await_job(gateway, job_id, 60, auth(key)))["status"] == "succeeded"
        # its jobs started: the key's place in the queue is free again
        assert (await gateway.post("/v1/jobs", json=body, headers=auth("limited"))).status_code == 202


async def test_usage_is_counted_per_key_name_and_audited_without_keys_or_text(
    keys_file: Path, workers: dict, redis_server, caplog: pytest.LogCaptureFixture
) -> None:
    before = REGISTRY.get_sample_value("rerankq_gateway_key_documents_total", {"key": "app-b"}) or 0
    caplog.set_level(logging.INFO, logger="rerankq.audit")
    async with app_client(api_keys_file=keys_file) as gateway:
        for _ in range(2):
            answer = await gateway.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}, headers=auth("app-b"))
            assert answer.status_code == 200
    assert REGISTRY.get_sample_value("rerankq_gateway_key_documents_total", {"key": "app-b"}) == before + 4
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "rerankq.audit"]
    mine = [line for line in lines if line["key"] == "app-b" and line["endpoint"] == "/v1/rerank"]
    assert len(mine) == 2 and all(line["status"] == 200 and line["documents"] == 2 for line in mine)
    logged = caplog.text
    assert KEYS["app-b"] not in logged and QUERY not in logged and DOCS[0] not in logged
    command = [sys.executable, "-m", "rerankq", "usage", "--since", "1h", "--json", "--redis-url", redis_server.url]
    usage = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout)
    assert usage["keys"]["app-b"]["requests"] >= 2 and usage["keys"]["app-b"]["search_units"] >= 2


def test_a_plain_key_in_the_keys_file_is_refused(tmp_path: Path, redis_server) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[[keys]]\nname = "app"\nkey = "rk-plain"\n')
    with pytest.raises(KeysFileError, match="plain keys are refused"):
        load_ring(get_settings().model_copy(update={"api_keys_file": path}))
    command = [sys.executable, "-m", "rerankq", "gateway", "--port", "1", "--redis-url", redis_server.url]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, "RERANKQ_API_KEYS_FILE": str(path)}
    )
    assert done.returncode == 2 and "plain keys are refused" in done.stderr and "Traceback" not in done.stderr


# --- real gateway processes --------------------------------------------------------------------


@pytest.fixture
def two_gateways(tmp_path: Path, workers: dict) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    keys = write_keys(tmp_path / "keys.toml", entry("app-a", ["rerank"], requests_per_minute=5))
    env = {"RERANKQ_API_KEYS_FILE": str(keys), "RERANKQ_DEFAULT_MODEL": "tiny-bert"}
    first = start_gateway(tmp_path / "gateway-1.log", env=env)
    second = start_gateway(tmp_path / "gateway-2.log", env=env)
    try:
        yield first, second
    finally:
        stop_process(first.process)
        stop_process(second.process)


@pytest.mark.slow
def test_two_replicas_share_one_keys_limit_tripping_at_exactly_n(two_gateways: tuple) -> None:
    # the limit counts per minute window: start well inside one, so that the run does not cross it
    wait_until(lambda: WINDOW_S - time.time() % WINDOW_S > 15, timeout=WINDOW_S)
    answers = []
    for i in range(8):
        url = two_gateways[i % 2].url
        body = {"query": f"{QUERY} {i}", "documents": DOCS}
        answers.append(httpx.post(f"{url}/v1/rerank", json=body, headers=auth("app-a"), timeout=60))
    assert [answer.status_code for answer in answers] == [200] * 5 + [429] * 3
    assert [answer.headers["X-RateLimit-Remaining"] for answer in answers[:5]] == ["4", "3", "2", "1", "0"]
    for refused in answers[5:]:
        assert refused.headers["X-RateLimit-Limit"] == "5" and refused.headers["X-RateLimit-Remaining"] == "0"
        assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW_S and refused.headers["X-RateLimit-Reset"]


@pytest.mark.slow
def test_a_reload_adds_and_removes_keys_while_requests_are_in_flight(tmp_path: Path, workers: dict) -> None:
    keys = write_keys(tmp_path / "keys.toml", entry("app-a", ["rerank"]))
    env = {"RERANKQ_API_KEYS_FILE": str(keys), "RERANKQ_DEFAULT_MODEL": "tiny-bert"}
    gateway = start_gateway(tmp_path / "gateway.log", env=env)
    outcomes: dict[str, Counter] = {"app-a": Counter(), "app-b": Counter()}
    stop = threading.Event()

    def traffic(key: str) -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            while not stop.is_set():
                try:
                    answer = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}, headers=auth(key))
                    outcomes[key][answer.status_code] += 1
                except httpx.HTTPError as e:  # a dropped request: what the reload must never cause
                    outcomes[key][type(e).__name__] += 1

    threads = [threading.Thread(target=traffic, args=(key,)) for key in ("app-a", "app-a", "app-b")]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: outcomes["app-a"][200] >= 5 and outcomes["app-b"][401] >= 1, timeout=60)
        write_keys(keys, entry("app-a", ["rerank"]), entry("app-b", ["rerank"]))  # added: seen on change
        wait_until(lambda: outcomes["app-b"][200] >= 3, timeout=30, why=gateway.log)
        # removed, by SIGHUP alone: the new file has the old one's size and modification time
        write_keys(keys, entry("app-b", ["rerank"]), stamp=keys.stat())
        a_before = outcomes["app-a"][200]
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(lambda: outcomes["app-a"][401] >= 3, timeout=30, why=gateway.log)
        assert outcomes["app-a"][200] >= a_before  # it served A until the reload, then refused it
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        stop_process(gateway.process)
    served = {key: {code for code in counts if code not in (200, 401)} for key, counts in outcomes.items()}
    assert served == {"app-a": set(), "app-b": set()}, outcomes  # every request answered, none dropped or 5xx
    assert "keys reloaded" in gateway.log()
