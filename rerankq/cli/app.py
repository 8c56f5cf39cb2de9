"""``rerankq``: workers, the gateway, the demo, operations tools. Heavy imports happen inside each
command; options, exit codes and one-line failures are shared (rerankq.cli.support)."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal, cast

import typer

from rerankq.cli.extras import needs_extra
from rerankq.cli.models import models_app
from rerankq.cli.support import (
    EXIT_USAGE,
    App,
    BackendOption,
    BrokerUrl,
    CheckRanking,
    Host,
    Kind,
    MaxLength,
    ModelName,
    RedisUrl,
    apply_settings,
    one_of,
    setting_option,
)
from rerankq.core.constants import LANES, Lane
from rerankq.core.registry import ModelKind

app = App(
    help="rerankq: cross-encoder reranking behind a Celery queue on Redis.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(models_app, name="models")


def _print_version(value: bool) -> None:
    if value:
        from rerankq import __version__

        typer.echo(f"rerankq {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """rerankq: cross-encoder reranking behind a Celery queue on Redis."""


def _setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)


@app.command()
def worker(
    model: ModelName = None,
    kind: Kind = None,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu.")] = "auto",
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs held at once; their pairs share batches.")] = 32,
    name: Annotated[str | None, typer.Option(help="Serve under this model name (default: folder name).")] = None,
    max_length: MaxLength = None,
    lanes: Annotated[
        str | None,
        typer.Option(help="Comma-separated lanes to consume (default: interactive and bulk, plus cpu on CPU)."),
    ] = None,
    min_free_gpu_mb: Annotated[int, typer.Option(min=0, help="Refuse to start on a GPU with less free memory.")] = 0,
    fallback_to_cpu: Annotated[bool, typer.Option(help="With too little free GPU memory, start on CPU.")] = False,
    torch_threads: Annotated[int | None, setting_option("torch_threads", "--torch-threads")] = None,
    cross_job_batching: Annotated[
        bool | None, setting_option("cross_job_batching", "--cross-job-batching/--no-cross-job-batching")
    ] = None,
    metrics_port: Annotated[int | None, setting_option("worker_metrics_port", "--metrics-port")] = None,
    prefix_reuse: Annotated[bool | None, setting_option("llm_prefix_reuse", "--prefix-reuse/--no-prefix-reuse")] = None,
    check_ranking: CheckRanking = None,
    languages: Annotated[
        str | None, typer.Option(help="Comma-separated golden-set languages the model must rank (default: manifest's).")
    ] = None,
    golden: Annotated[
        Path | None, typer.Option(help="A golden-set file of your own (JSON Lines; default: the shipped set).")
    ] = None,
    backend: BackendOption = None,
    redis_url: RedisUrl = None,
    broker_url: BrokerUrl = None,
) -> None:
    """Serve one model version: check and load it once, then consume its queues."""
    _setup_logging()
    settings = apply_settings(
        redis_url=redis_url,
        broker_url=broker_url,
        max_length=max_length,
        torch_threads=torch_threads,
        cross_job_batching=cross_job_batching,
        llm_prefix_reuse=prefix_reuse,
        worker_metrics_port=metrics_port,
        check_ranking=check_ranking,
        backend=backend,
    )
    with needs_extra("worker", "worker"):
        from rerankq.worker.main import WorkerOptions, run_worker

    options = WorkerOptions(
        model=model or settings.default_model,
        kind=cast(ModelKind | None, kind),
        device=device,
        concurrency=concurrency,
        name=name,
        lanes=_parse_lanes(lanes),
        min_free_gpu_mb=min_free_gpu_mb,
        fallback_to_cpu=fallback_to_cpu,
        languages=tuple(language.strip() for language in (languages or "").split(",") if language.strip()),
        golden=golden,
    )
    run_worker(options, settings)


def _parse_lanes(lanes: str | None) -> tuple[Lane, ...] | None:
    if lanes is None:
        return None
    parsed = tuple(lane.strip() for lane in lanes.split(",") if lane.strip())
    unknown = [lane for lane in parsed if lane not in LANES]
    if unknown or not parsed:
        raise typer.BadParameter(f"lanes must be among {', '.join(LANES)}; got {lanes!r}", param_hint="--lanes")
    return cast(tuple[Lane, ...], parsed)


@app.command()
def gateway(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    insecure: Annotated[
        bool, typer.Option(help="Allow a non-loopback address without API keys (something in front authenticates).")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Gateway processes sharing the port.")] = 1,
    redis_url: RedisUrl = None,
) -> None:
    """Serve the HTTP gateway: Cohere/Jina/TEI rerank endpoints and the async jobs API."""
    _setup_logging()
    apply_settings(redis_url=redis_url)
    with needs_extra("gateway", "gateway"):
        from rerankq.gateway.keys import KeysFileError
        from rerankq.gateway.server import UnsafeBind, serve

    try:
        serve(host, port, insecure, workers)
    except (UnsafeBind, KeysFileError) as e:
        typer.echo(f"rerankq gateway: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from e


@app.command()
def serve(
    model: ModelName = None,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu (each worker).")] = "auto",
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, each holding the model once.")] = 1,
    backend: BackendOption = None,
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="The gateway's port.")] = 8080,
    exporter_port: Annotated[
        int, typer.Option(min=0, max=65535, help="The exporter's /metrics port (0: no exporter).")
    ] = 9808,
    insecure: Annotated[
        bool, typer.Option(help="Allow a non-loopback address without API keys (something in front authenticates).")
    ] = False,
    redis: Annotated[
        str | None,
        typer.Option(
            callback=one_of(("local", "auto")),
            help="local: start a private redis-server; auto: the configured URL, else the default one if a "
            "Redis answers there, else a private one. Unset: the configured or default URL must answer.",
        ),
    ] = None,
    redis_url: RedisUrl = None,
) -> None:
    """Serve one model in one command: worker(s), the gateway and the exporter (and a private Redis
    when asked), output prefixed by process; Ctrl-C or SIGTERM stops them all."""
    import os

    _setup_logging()
    if redis == "local" and redis_url:
        raise typer.BadParameter("pass --redis local or --redis-url, not both", param_hint="--redis")
    settings = apply_settings(redis_url=redis_url, backend=backend)
    with needs_extra("serve", "worker,gateway"):
        import fastapi  # noqa: F401  (the gateway child needs it)
        import torch  # noqa: F401  (the worker children need it)

        from rerankq.cli.serve import ServeError, ServeOptions, run_serve

    given = bool(redis_url) or "RERANKQ_REDIS_URL" in os.environ
    chosen = cast(Literal["local", "auto"] | None, redis)
    options = ServeOptions(
        model or settings.default_model, device, workers, backend, host, port, exporter_port, insecure, chosen, given
    )
    try:
        raise typer.Exit(run_serve(options, settings))
    except ServeError as e:
        typer.echo(f"rerankq serve: {e}", err=True)
        raise typer.Exit(e.exit_code) from e


@app.command()
def demo(
    model: ModelName = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="A running Redis (default RERANKQ_REDIS_URL, else its own).")
    ] = None,
) -> None:
    """Start a worker, rerank English and Chinese samples, print the ranking, shut down."""
    apply_settings(redis_url=redis_url)
    with needs_extra("demo", "worker"):
        import torch  # noqa: F401  (the demo starts a worker process, which needs it)

        from rerankq.cli.demo import run_demo

    raise typer.Exit(run_demo(model, redis_url))


@app.command()
def bench(
    scenario: Annotated[
        str,
        typer.Argument(
            help="throughput, naive, mixed, cache, latency, scale, priority, startup, seed, backends, prefix "
            "(LLM rerankers: shared prompt reused or not), quantization (CPU: ways to keep a ranking through "
            "int8), brokers (Redis vs RabbitMQ; needs the local RabbitMQ), tracing (latency with traces off and "
            "on; needs the otel extra), or all (every one but brokers, quantization and tracing; writes "
            "docs/BENCHMARKS.md)."
        ),
    ],
    model: ModelName = None,
    kind: Kind = None,
    shape: Annotated[
        str | None,
        typer.Option(
            help="Random weights with a real architecture: tiny-bert, tiny-xlmr, minilm-l6 (default), "
            "bge-reranker-base, bge-reranker-v2-m3, qwen3-reranker-0.6b, tiny-qwen3-reranker, tiny-gemma-reranker."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu.")] = "auto",
    jobs: Annotated[int | None, typer.Option(min=1, help="Jobs per run (default: per scenario).")] = None,
    docs_per_job: Annotated[int | None, typer.Option(min=1, help="Documents per job (default: per scenario).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Job threads per worker.")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Also one JSON object per result on its own line.")] = False,
    broker: Annotated[
        str,
        typer.Option(
            help="Where the jobs queue: redis, or rabbitmq (a virtual host of the run's own on the local "
            "RabbitMQ, RERANKQ_TEST_RABBITMQ; results stay in Redis)."
        ),
    ] = "redis",
) -> None:
    """Measure rerankq against the raw model and the usual recipes, side by side, on real workers
    (it starts its own Redis and workers)."""
    with needs_extra("bench", "worker"):
        from rerankq.bench.runner import BenchOptions, Broker, run
        from rerankq.bench.scenarios import SCENARIOS
        from rerankq.testing.model_shapes import SHAPES

    if scenario != "all" and scenario not in SCENARIOS:
        raise typer.BadParameter(f"must be one of {', '.join(SCENARIOS)}, all; got {scenario!r}", param_hint="SCENARIO")
    if shape is not None and shape not in SHAPES:
        raise typer.BadParameter(f"must be one of {', '.join(SHAPES)}; got {shape!r}", param_hint="--shape")
    if model and shape:
        raise typer.BadParameter("pass --model or --shape, not both", param_hint="--model")
    if broker not in ("redis", "rabbitmq"):
        raise typer.BadParameter(f"must be redis or rabbitmq; got {broker!r}", param_hint="--broker")
    _setup_logging(logging.WARNING)
    options = BenchOptions(scenario, model, shape, device, jobs, docs_per_job, concurrency, as_json)
    run(replace(options, kind=cast(ModelKind | None, kind), broker=cast(Broker, broker)))


cache_app = App(help="Inspect or clear the result cache.", no_args_is_help=True, path="rerankq cache")
app.add_typer(cache_app, name="cache")


@cache_app.command("stats")
def cache_stats(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False, redis_url: RedisUrl = None
) -> None:
    """Hits, misses, cached pairs and memory of the cache Redis."""
    import json

    from rich.console import Console
    from rich.table import Table

    from rerankq.producer.score_cache import ScoreCache

    stats = ScoreCache(apply_settings(redis_url=redis_url)).stats()
    looked_up = stats["hits"] + stats["misses"]
    stats_out: dict[str, float] = {**stats, "hit_ratio": stats["hits"] / looked_up if looked_up else 0.0}
    if as_json:
        typer.echo(json.dumps(stats_out))
        return
    table = Table("metric", "value", title="rerankq result cache")
    for metric, value in stats_out.items():
        table.add_row(metric, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)


@cache_app.command("clear")
def cache_clear(model: ModelName = None, redis_url: RedisUrl = None) -> None:
    """Delete cached scores (all, or one model's)."""
    from rerankq.producer.score_cache import ScoreCache

    deleted = ScoreCache(apply_settings(redis_url=redis_url)).clear(model)
    typer.echo(f"deleted {deleted} cached scores" + (f" of {model}" if model else ""))


@app.command()
def exporter(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve /metrics on.")] = 9808,
    redis_url: RedisUrl = None,
) -> None:
    """Serve queue depths per model and lane (waiting + held: what autoscalers scale on), worker
    counts and cache look-ups; with PROMETHEUS_MULTIPROC_DIR, also this host's worker metrics."""
    _setup_logging()
    settings = apply_settings(redis_url=redis_url)
    with needs_extra("exporter", "gateway"):
        from rerankq.cli.exporter import serve_exporter

    serve_exporter(settings, port, host)


@app.command()
def flower(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve Flower on.")] = 5555,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback address without basic auth.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Flower on rerankq's broker (task events and per-model, per-lane queues), with basic auth
    from RERANKQ_FLOWER_BASIC_AUTH ("user:password", comma-separated)."""
    apply_settings(redis_url=redis_url)
    with needs_extra("flower", "flower"):
        import flower  # noqa: F401  (Celery loads it as a command plugin, and misses it silently)

        from rerankq.cli.flower import UnsafeFlower, run_flower

    try:
        run_flower(port, host, insecure)
    except UnsafeFlower as e:
        typer.echo(f"rerankq flower: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from e


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False, redis_url: RedisUrl = None
) -> None:
    """Workers, every queue that holds jobs or has a worker (with its depth), aliases and the
    cache hit ratio, from Redis."""
    from rerankq.cli.status import print_status

    print_status(apply_settings(redis_url=redis_url), as_json)


@app.command()
def usage(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d (whole UTC hours).")] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Per API key: requests, documents, document tokens, search units, jobs and 429s, as the
    gateways counted them in Redis (names only, never keys)."""
    from rerankq.cli.usage import print_usage

    print_usage(apply_settings(redis_url=redis_url), since, as_json)


bulk_app = App(
    help="Offline re-indexing: rerank whole files through the bulk lane.", no_args_is_help=True, path="rerankq bulk"
)
app.add_typer(bulk_app, name="bulk")


@bulk_app.command("run")
def bulk_run(
    input: Annotated[
        Path, typer.Argument(help="Records: JSON Lines, or Parquet (.parquet) with id, query, documents.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Ranked records, in input order (.jsonl or .parquet).")
    ],
    model: ModelName = None,
    top_n: Annotated[
        int | None, typer.Option(min=1, help="Keep the best N documents per record (default all).")
    ] = None,
    errors: Annotated[
        Path | None, typer.Option(help="Failed records with their reasons (default OUTPUT.errors.jsonl).")
    ] = None,
    max_in_flight: Annotated[int | None, setting_option("bulk_max_in_flight", "--max-in-flight")] = None,
    restart: Annotated[
        bool, typer.Option(help="Discard earlier output and progress, start from the first record.")
    ] = False,
    log_every: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds between progress lines when not on a terminal (also while waiting)."),
    ] = 10.0,
    redis_url: RedisUrl = None,
) -> None:
    """Rerank every record of INPUT into OUTPUT. Re-running the same command resumes an interrupted
    run. Exit status: 0 all ranked, 1 some records failed (see the errors file), 2 cannot start,
    3 Redis unreachable, 130 interrupted."""
    from rich.console import Console

    from rerankq.bulk.formats import BulkFileError
    from rerankq.bulk.run import BulkOptions, BulkUsageError, run_bulk
    from rerankq.core.tracing_setup import start_tracing
    from rerankq.producer.client import RerankClient

    settings = apply_settings(redis_url=redis_url, bulk_max_in_flight=max_in_flight)
    options = BulkOptions(input, output, errors, model, top_n, restart, log_every)
    console = Console(stderr=True)
    start_tracing("rerankq-bulk")  # from the OTEL_* variables (docs/operations.md)
    try:
        with RerankClient(settings=settings) as client:
            raise typer.Exit(run_bulk(options, client, console))
    except (BulkUsageError, BulkFileError) as e:
        console.print(f"rerankq bulk run: {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from e


def main() -> None:
    app()
