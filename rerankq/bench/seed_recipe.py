"""The seed's recipe: the service a team writes before it adopts rerankq, and what rerankq's
gateway is compared with (``rerankq bench seed``, the GPU kit's ``vs_seed_recipe``).

It is the hand-rolled FastAPI + ``CrossEncoder`` service of the deployment guides: one model
singleton, a plain ``def`` route (FastAPI runs it on its thread pool), one
``predict(pairs, batch_size=32)`` per request, fp16 on CUDA. Both services get the same pairs from
the same number of concurrent clients, each client sending its next request when the last is
answered, as web apps do.

    python -m rerankq.bench.seed_recipe --model SPEC --device cpu --port 8099
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import CrossEncoder

from rerankq.bench.pipeline import WorkerSetup, serving
from rerankq.bench.workload import Job, make_jobs, total_pairs, uniform
from rerankq.core.settings import get_settings
from rerankq.testing.local_redis import free_port
from rerankq.testing.processes import GatewayProcess, start_gateway, stop_process, wait_until_serving
from rerankq.worker.loading import resolve_model

Record = dict[str, Any]
DOCUMENTS_PER_REQUEST = 20
PASSAGES = uniform(32, 128)  # words per document, as in the other throughput scenarios
REQUEST_TIMEOUT_S = 600.0


class SeedRequest(BaseModel):
    """Cohere v1's request, the fields the recipe reads."""

    query: str
    documents: list[str]
    top_n: int | None = None


def create_seed_app(spec: str, device: str, batch_size: int = 32) -> FastAPI:
    """The recipe's app, its model loaded once (the same weights and length limit rerankq uses)."""
    manifest = resolve_model(spec, None, get_settings())
    model = CrossEncoder(manifest.source, device=device, max_length=manifest.max_length)
    if device.startswith("cuda"):
        model.model.half()
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/rerank")
    def rerank(request: SeedRequest) -> dict[str, list[dict[str, float]]]:
        pairs = [(request.query, document) for document in request.documents]
        scores = model.predict(pairs, batch_size=batch_size, show_progress_bar=False)
        ranked = sorted(enumerate(scores.tolist()), key=lambda item: -item[1])[: request.top_n]
        return {"results": [{"index": index, "relevance_score": score} for index, score in ranked]}

    return app


@contextmanager
def seed_service(setup: WorkerSetup) -> Iterator[str]:
    """The recipe in its own process (uvicorn, one process, as the guides run it); its URL."""
    port, log_path = free_port(), setup.run_dir / "seed-recipe.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = ["--model", setup.spec, "--device", setup.device, "--port", str(port)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", __name__, *args], stdout=log_file, stderr=subprocess.STDOUT)
    service = GatewayProcess(process, log_path, f"http://127.0.0.1:{port}")
    try:
        wait_until_serving(service, timeout=600)
        yield service.url
    finally:
        stop_process(process)


@contextmanager
def gateway_for(setup: WorkerSetup) -> Iterator[str]:
    """rerankq's gateway on loopback (no API keys needed there) in front of the set-up's Redis
    (and broker)."""
    env = {**setup.env, "RERANKQ_DEFAULT_MODEL": setup.model}
    gateway = start_gateway(setup.run_dir / "gateway.log", env=env)
    try:
        yield gateway.url
    finally:
        stop_process(gateway.process)


@dataclass(frozen=True)
class Load:
    seconds: float  # first request sent to last answer
    pairs: int
    latencies_ms: list[float]

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds


def drive(url: str, jobs: Sequence[Job], clients: int, model: str) -> Load:
    """``clients`` threads share the jobs, each posting its next one when the last is answered."""
    pending, latencies, errors = list(reversed(jobs)), list[float](), list[str]()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
            while True:
                with lock:
                    if not pending or errors:
                        return
                    job = pending.pop()
                try:
                    latencies.append(_post(http, job, model))
                except (httpx.HTTPError, ValueError) as e:  # noted, then every client stops
                    errors.append(f"{url}: {e}")

    threads = [threading.Thread(target=client, name=f"bench-client-{i}") for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return Load(time.perf_counter() - started, total_pairs(list(jobs)), latencies)


def _post(http: httpx.Client, job: Job, model: str) -> float:
    started = time.perf_counter()
    response = http.post("/v1/rerank", json={"model": model, "query": job.query, "documents": job.documents})
    response.raise_for_status()
    if len(response.json()["results"]) != len(job.documents):
        raise ValueError(f"{len(response.json()['results'])} results for {len(job.documents)} documents")
    return (time.perf_counter() - started) * 1000


def seed_comparison(setup: WorkerSetup, jobs: int, clients: Sequence[int] = (1, 8, 32)) -> Iterator[Record]:
    """For each client count: the same fresh jobs (no score cache hit) through both services."""
    from rerankq.bench.scenarios import percentile  # scenarios imports this module lazily too

    with seed_service(setup) as seed_url, serving(setup), gateway_for(setup) as gateway_url:
        for count in clients:
            work = make_jobs(jobs, DOCUMENTS_PER_REQUEST, PASSAGES, seed=count)
            drive(seed_url, work[: 2 * count], count, setup.model)  # both warm: threads, connections
            drive(gateway_url, make_jobs(2 * count, DOCUMENTS_PER_REQUEST, PASSAGES), count, setup.model)
            seed, rerankq = drive(seed_url, work, count, setup.model), drive(gateway_url, work, count, setup.model)
            yield {
                "clients": count,
                "seed_pairs_per_s": seed.pairs_per_s,
                "rerankq_pairs_per_s": rerankq.pairs_per_s,
                "ratio": rerankq.pairs_per_s / seed.pairs_per_s,
                "seed_ms_p50": percentile(seed.latencies_ms, 50),
                "seed_ms_p99": percentile(seed.latencies_ms, 99),
                "rerankq_ms_p50": percentile(rerankq.latencies_ms, 50),
                "rerankq_ms_p99": percentile(rerankq.latencies_ms, 99),
                "pairs": rerankq.pairs,
            }


def main(argv: list[str] | None = None) -> None:
    import uvicorn  # the gateway's server: installed with rerankq[gateway]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="registry name, HF id or folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = create_seed_app(args.model, args.device)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
