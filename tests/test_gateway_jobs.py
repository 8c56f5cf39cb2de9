"""The async jobs API: submit, poll, cancel, signed callbacks with retries; ids shared with the SDK."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest
from gateway_support import AUTH, CALLBACK_SECRET, GATEWAY_ENV, wait_for_job
from pydantic import SecretStr

from rerankq import JobCancelled, RerankClient
from rerankq.gateway.callbacks import verify
from rerankq.producer.job_ledger import record_submitted
from rerankq.testing.processes import GatewayProcess, start_gateway, stop_process
from rerankq.testing.waiting import wait_until

pytestmark = pytest.mark.slow

QUERY = "what do cats eat"
DOCS = ["Cats eat meat and fish.", "The stock market fell today.", "Kittens drink milk."]


@pytest.fixture
def http(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60)


def test_submit_then_poll_until_done(http: httpx.Client, client: RerankClient) -> None:
    response = http.post("/v1/jobs", json={"query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": True})
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "pending" and accepted["status_url"].endswith(f"/v1/jobs/{accepted['id']}")
    assert response.headers["location"] == accepted["status_url"]
    state = wait_for_job(http, accepted["id"])
    assert state["status"] == "succeeded" and state["model"] == "tiny-bert"
    reference = client.rank(QUERY, DOCS, model="tiny-bert", top_n=2, timeout=30)
    results = state["result"]["results"]
    assert [(r["index"], r["relevance_score"]) for r in results] == [
        (r.index, pytest.approx(r.score, abs=1e-6)) for r in reference
    ]
    assert [r["document"]["text"] for r in results] == [DOCS[r.index] for r in reference]


def test_job_ids_are_interchangeable_with_the_sdk(http: httpx.Client, client: RerankClient) -> None:
    from_gateway = http.post("/v1/jobs", json={"query": QUERY, "documents": DOCS}).json()["id"]
    assert client.job(from_gateway).result(timeout=30).model == "tiny-bert"
    from_sdk = client.submit(QUERY, DOCS, model="tiny-bert")
    state = wait_for_job(http, from_sdk.id)
    assert state["status"] == "succeeded" and state["result"]["id"] == from_sdk.id


def test_unknown_job_is_404(http: httpx.Client) -> None:
    for method in ("GET", "DELETE"):
        response = http.request(method, "/v1/jobs/0b7e1c1e-0000-4000-8000-000000000000")
        assert response.status_code == 404 and response.json()["error_type"] == "not_found"


def test_a_queued_job_is_cancelled_and_never_scored(http: httpx.Client, client: RerankClient, workers: dict) -> None:
    # The job exists (its ledger marker) but is not on the queue yet, so it is certainly pending
    # when cancelled; then it is published and the worker must drop it.
    job = client.build(QUERY, DOCS, model="tiny-bert", cache=False)
    record_submitted(client.app.backend.client, job.job_id, job.model, "interactive", client.settings)
    cancelled = http.delete(f"/v1/jobs/{job.job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    client.send(job)
    with pytest.raises(JobCancelled):
        client.job(job.job_id).result(timeout=10)
    worker_log = workers["tiny-bert"].log
    deadline_state = wait_for_job(http, job.job_id, timeout=2)
    assert deadline_state["status"] == "cancelled"
    wait_until(lambda: f'"job_cancelled", "job_id": "{job.job_id}"' in worker_log())
    assert http.get(f"/v1/jobs/{job.job_id}").json()["status"] == "cancelled"  # no result replaced it


def test_a_finished_job_cannot_be_cancelled(http: httpx.Client) -> None:
    job_id = http.post("/v1/jobs", json={"query": QUERY, "documents": DOCS}).json()["id"]
    assert wait_for_job(http, job_id)["status"] == "succeeded"
    response = http.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 409 and "succeeded" in response.json()["message"]


class Receiver(BaseHTTPRequestHandler):
    """A callback endpoint that fails its first delivery with 503, then records and accepts."""

    calls: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.calls.append((dict(self.headers), body))
        self.send_response(503 if len(Receiver.calls) == 1 else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_callback_is_signed_and_retried_until_accepted(http: httpx.Client, receiver: str) -> None:
    body = {"query": QUERY, "documents": DOCS, "callback_url": receiver}
    job_id = http.post("/v1/jobs", json=body).json()["id"]
    wait_until(lambda: len(Receiver.calls) >= 2, timeout=30)
    first, second = Receiver.calls[:2]
    assert first[1] == second[1]  # the retry carries the same state
    headers, payload = second
    assert headers["X-Rerankq-Job-Id"] == job_id
    assert verify(CALLBACK_SECRET.encode(), headers["X-Rerankq-Signature"], payload)
    assert not verify(b"another secret", headers["X-Rerankq-Signature"], payload)
    state = json.loads(payload)
    assert state["id"] == job_id and state["status"] == "succeeded" and len(state["result"]["results"]) == len(DOCS)
    assert http.get(f"/v1/jobs/{job_id}").json() == state


@pytest.mark.security
@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/x", "http://[::1]/x"],
)
async def test_callbacks_to_private_addresses_are_refused(url: str) -> None:
    """Server-side request forgery: by default a callback may not reach loopback, private,
    link-local (cloud metadata) or reserved addresses; nothing is enqueued for the request."""
    from gateway_support import app_client

    async with app_client(api_keys=[], callback_secret=SecretStr("s"), callback_allow_private=False) as gateway:
        response = await gateway.post("/v1/jobs", json={"query": QUERY, "documents": DOCS, "callback_url": url})
    assert response.status_code == 422 and response.json()["field"] == "callback_url"
    assert "must reach a public address" in response.json()["message"]


async def test_a_public_callback_address_passes_the_check() -> None:
    from rerankq.gateway.callback_targets import check_callback_url

    await check_callback_url("https://93.184.215.14/hook", allow_private=False)  # a global address
    await check_callback_url("http://127.0.0.1/hook", allow_private=True)  # the operator's choice


def test_callback_url_must_be_http(http: httpx.Client) -> None:
    response = http.post("/v1/jobs", json={"query": QUERY, "documents": DOCS, "callback_url": "file:///etc/passwd"})
    assert response.status_code == 422 and response.json()["field"] == "callback_url"


def test_gateway_processes_share_nothing_but_redis(
    http: httpx.Client, client: RerankClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Behind a load balancer consecutive requests reach different processes: a job submitted to
    one is fetched and cancelled through another."""
    other = start_gateway(tmp_path_factory.mktemp("second-gateway") / "gateway.log", env=GATEWAY_ENV)
    try:
        second = httpx.Client(base_url=other.url, headers=AUTH, timeout=60)
        job_id = http.post("/v1/jobs", json={"query": QUERY, "documents": DOCS}).json()["id"]
        assert wait_for_job(second, job_id)["status"] == "succeeded"
        queued = client.build(QUERY, DOCS, model="tiny-bert", cache=False)
        record_submitted(client.app.backend.client, queued.job_id, queued.model, "interactive", client.settings)
        assert second.delete(f"/v1/jobs/{queued.job_id}").json()["status"] == "cancelled"
        assert http.get(f"/v1/jobs/{queued.job_id}").json()["status"] == "cancelled"
    finally:
        stop_process(other.process)
