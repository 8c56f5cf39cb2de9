"""``rerankq demo``: a Redis, a worker, English and Chinese sample jobs, a printed ranking, clean shutdown."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rerankq.cli.serve import served_name
from rerankq.core.redis_clients import masked_url
from rerankq.core.registry import ModelManifest, find_manifest
from rerankq.core.settings import get_settings, use_settings
from rerankq.errors import ModelLoadError
from rerankq.producer.client import RerankClient
from rerankq.testing.processes import (
    given_redis,
    redis_for_run,
    start_worker,
    stop_worker,
    wait_until_consuming,
)
from rerankq.worker.hub import OFFLINE_MODEL, weights_reachable

RUN_DIR = Path(".run")
SAMPLES = [  # (language, query, documents)
    (
        "en",
        "what is artificial intelligence",
        [
            "The apple is a sweet fruit that grows on trees; it is eaten raw or baked in pies.",
            "Artificial intelligence is the field of building machines that learn, reason and solve problems.",
            "Redis is an in-memory data store often used as a cache and a message broker.",
        ],
    ),
    (
        "zh",
        "什么是人工智能",
        [
            "苹果是一种生长在树上的甜味水果，可以生吃也可以做成派。",
            "人工智能是研究如何让机器学习、推理和解决问题的学科。",
        ],
    ),
    ("zh", "苹果手机", ["苹果是一种富含维生素的水果。", "苹果手机是苹果公司设计和销售的智能手机。"]),
]

console = Console()


def run_demo(model: str | None = None, redis_url: str | None = None) -> int:
    """On ``redis_url``, else RERANKQ_REDIS_URL, else a throwaway redis-server of its own."""
    model = model or get_settings().default_model
    RUN_DIR.mkdir(exist_ok=True)
    with redis_for_run(redis_url) as url:
        os.environ["RERANKQ_REDIS_URL"] = url
        use_settings(get_settings().updated(redis_url=url))
        model = model if _weights_reachable(model) else _fall_back(model)
        with _worker(model) as served:
            _rank_samples(RerankClient(url), served)
    given = given_redis(redis_url)
    stopped = (
        f"worker stopped; Redis at {masked_url(given)} left running (not the demo's)"
        if given
        else "worker and Redis stopped"
    )
    console.print(f"[green]demo finished; {stopped}[/green]")
    return 0


def _fall_back(model: str) -> str:
    console.print(
        f"[yellow]{model}: weights not in the local cache and the model hub is unreachable (or HF_HUB_OFFLINE=1); "
        f"using the offline model {OFFLINE_MODEL} instead[/yellow]"
    )
    return OFFLINE_MODEL


def _weights_reachable(model: str) -> bool:
    """Cached weights, a local folder, or a hub we can reach; decided in seconds, not after retries."""
    manifest = find_manifest(get_settings().models_dir, model)
    try:
        return weights_reachable(manifest or ModelManifest(name=OFFLINE_MODEL, source=model))
    except ModelLoadError:  # a weights package not installed
        return False


@contextmanager
def _worker(model: str) -> Iterator[str]:
    log_path = RUN_DIR / "demo-worker.log"
    worker = start_worker(model, log_path, "--concurrency", "8", device="auto")
    console.print(f"starting worker for {model} (log: {log_path})")
    try:
        wait_until_consuming(worker, timeout=600)
    except (RuntimeError, TimeoutError) as e:
        stop_worker(worker)
        raise SystemExit(str(e)) from e
    try:
        yield served_name(model, get_settings().models_dir)
    finally:
        stop_worker(worker, timeout=30)


def _samples_for(model: str) -> list[tuple[str, list[str]]]:
    """The samples in the model's languages, saying what is left out and what its scores mean."""
    manifest = find_manifest(get_settings().models_dir, model)
    if manifest is not None and manifest.kind == "bi-encoder":
        console.print(
            f"[yellow]{model} is a bi-encoder, not a reranker: it embeds query and document apart and scores "
            "(cos + 1) / 2, so unrelated documents score near 0.5 by construction[/yellow]"
        )
    kept = [
        (query, docs) for language, query, docs in SAMPLES if manifest is None or manifest.checks_language(language)
    ]
    if len(kept) < len(SAMPLES):
        languages = ", ".join(manifest.languages) if manifest else ""
        console.print(f"[yellow]{model} reads {languages} only: the Chinese samples are left out[/yellow]")
    return kept


def _rank_samples(client: RerankClient, model: str) -> None:
    samples = _samples_for(model)
    started = time.perf_counter()
    handles = [client.submit(query, docs, model=model, return_documents=True) for query, docs in samples]
    for (query, _), handle in zip(samples, handles, strict=True):
        result = handle.result(timeout=120)
        table = Table(title=f"{query}  ({result.model} on {result.device})", title_justify="left")
        table.add_column("rank")
        table.add_column("score")
        table.add_column("document")
        for rank, doc in enumerate(result.results, 1):
            table.add_row(str(rank), f"{doc.score:.4f}", doc.document or "")
        console.print(table)
        stats = result.stats
        console.print(
            f"  queue {stats.queue_ms:.1f} ms, tokenize {stats.tokenize_ms:.1f} ms, "
            f"inference {stats.infer_ms:.1f} ms, {stats.pairs} pairs in {len(stats.batches)} batch(es)"
        )
    console.print(f"all {len(samples)} jobs answered in {(time.perf_counter() - started) * 1000:.0f} ms end to end")
