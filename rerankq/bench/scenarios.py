"""The benchmark scenarios. Each measures rerankq and its comparison side by side in one run and
returns one record per comparison, with the fields ``rerankq bench --json`` promises."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rerankq.bench.inprocess import BatchedRun, InProcessModel
from rerankq.bench.pipeline import WorkerSetup, serving
from rerankq.bench.workload import Job, log_normal, make_jobs, total_pairs, uniform
from rerankq.core.settings import BackendName, get_settings
from rerankq.worker.loading import resolve_model
from rerankq.worker.prompt_prefix import PrefixStats

if TYPE_CHECKING:
    from rerankq.worker.model_diff import CloseAgreement  # scipy: imported where agreement is measured

Record = dict[str, Any]
PASSAGES = uniform(32, 128)  # words per document in throughput, naive, scale and backends
ROUNDS = 3  # timed rounds per backend in `backends`
EXPORTED: tuple[BackendName, ...] = ("onnx", "onnx-int8")
MIXED = log_normal(20, 500)


@dataclass
class BenchContext:
    setup: WorkerSetup
    jobs: int | None  # --jobs: overrides each scenario's default
    docs_per_job: int | None
    load_model: Callable[[BackendName], InProcessModel]  # the model in-process, on one backend
    running_all: bool = False  # `all` keeps cache's and latency's own sample sizes
    _model: InProcessModel | None = field(default=None, init=False)

    @property
    def model(self) -> InProcessModel:
        """The in-process comparison model, loaded on first use."""
        if self._model is None:
            self._model = self.load_model("torch")
        return self._model

    def job_count(self, default: int) -> int:
        return self.jobs or default

    def docs(self, default: int) -> int:
        return self.docs_per_job or default

    def samples(self, jobs: int, docs: int) -> tuple[int, int]:
        """Job count and size for the latency-type scenarios: theirs, unless run on their own."""
        return (jobs, docs) if self.running_all else (self.job_count(jobs), self.docs(docs))


def throughput(ctx: BenchContext) -> Iterator[Record]:
    """What the queue costs: the same jobs through SDK → Redis → worker vs the same batcher fed
    directly in-process, in windows of as many jobs as a worker holds (``--concurrency``)."""
    jobs = make_jobs(ctx.job_count(2000), ctx.docs(8), PASSAGES)
    raw = ctx.model.batched(jobs, window=ctx.setup.concurrency)
    with serving(ctx.setup) as pipeline:
        timed, scores = pipeline.run(jobs)
    diff = max(abs(a - b) for got, want in zip(scores, raw.scores, strict=True) for a, b in zip(got, want, strict=True))
    yield {
        "raw_pairs_per_s": raw.timed.pairs_per_s,
        "pipeline_pairs_per_s": timed.pairs_per_s,
        "ratio": timed.pairs_per_s / raw.timed.pairs_per_s,
        "pairs": timed.pairs,
        "max_abs_score_diff": diff,
        "padding_ratio": {"raw": raw.stats.padding_ratio, "pipeline": pipeline.padding_ratio},
    }


def naive(ctx: BenchContext) -> Iterator[Record]:
    """One job = one forward pass (cross-job batching off) vs rerankq's batching, same pool size."""
    for docs_per_job in [ctx.docs_per_job] if ctx.docs_per_job else [1, 8]:
        count = ctx.job_count(1000)
        with serving(ctx.setup, 1, "--no-cross-job-batching") as pipeline:
            naive_run, _ = pipeline.run(make_jobs(count, docs_per_job, PASSAGES))
        with serving(ctx.setup) as pipeline:
            batched_run, _ = pipeline.run(make_jobs(count, docs_per_job, PASSAGES))
        yield {
            "naive_pairs_per_s": naive_run.pairs_per_s,
            "pipeline_pairs_per_s": batched_run.pairs_per_s,
            "ratio": batched_run.pairs_per_s / naive_run.pairs_per_s,
            "docs_per_job": docs_per_job,
        }


def mixed(ctx: BenchContext) -> Iterator[Record]:
    """Mixed lengths: rerankq vs a service calling ``CrossEncoder.predict(pairs, batch_size=32)``
    for each job in arrival order, in-process (no queue in front of the baseline)."""
    jobs = make_jobs(ctx.job_count(250), ctx.docs(8), MIXED)
    baseline = ctx.model.predict_per_job(jobs)
    with serving(ctx.setup) as pipeline:
        timed, _ = pipeline.run(jobs)
    yield {
        "baseline_pairs_per_s": baseline.pairs_per_s,
        "pipeline_pairs_per_s": timed.pairs_per_s,
        "ratio": timed.pairs_per_s / baseline.pairs_per_s,
        "padding_ratio": {"baseline": ctx.model.per_job_padding(jobs), "pipeline": pipeline.padding_ratio},
    }


def cache(ctx: BenchContext) -> Iterator[Record]:
    """A 1 x 100 job computed (cold, fresh text each time), then answered from the cache (warm)."""
    cold_jobs = make_jobs(*ctx.samples(5, 100), PASSAGES)
    with serving(ctx.setup) as pipeline:
        cold = [pipeline.e2e_ms(job) for job in cold_jobs]
        warm = [pipeline.e2e_ms(cold_jobs[0]) for _ in range(100)]
    yield {
        "cold_ms_p50": percentile(cold, 50),
        "warm_ms_p50": percentile(warm, 50),
        "warm_ms_p99": percentile(warm, 99),
        "speedup": percentile(cold, 50) / percentile(warm, 50),
    }


def latency(ctx: BenchContext) -> Iterator[Record]:
    """Single 1 x 20 jobs, one at a time, on an idle worker vs the model's own compute; where each
    job's time went (``Pipeline.stages_ms``), as the median of each stage."""
    jobs = make_jobs(*ctx.samples(100, 20), PASSAGES)
    compute = [ctx.model.compute_ms(job) for job in jobs]
    with serving(ctx.setup) as pipeline:
        stages = [pipeline.stages_ms(job) for job in jobs]
    e2e = [job["e2e"] for job in stages]
    yield {
        "compute_ms_p50": percentile(compute, 50),
        "e2e_ms_p50": percentile(e2e, 50),
        "e2e_ms_p99": percentile(e2e, 99),
        "overhead_ms_p50": percentile(e2e, 50) - percentile(compute, 50),
        "stages_ms_p50": {name: round(percentile([job[name] for job in stages], 50), 3) for name in stages[0]},
    }


def scale(ctx: BenchContext) -> Iterator[Record]:
    """One worker process vs two, each computing with one thread, on the same Redis."""
    count, docs = ctx.job_count(600), ctx.docs(8)
    with serving(ctx.setup, 1, "--torch-threads", "1") as pipeline:
        one, _ = pipeline.run(make_jobs(count, docs, PASSAGES))
    with serving(ctx.setup, 2, "--torch-threads", "1") as pipeline:
        two, _ = pipeline.run(make_jobs(count, docs, PASSAGES))
    yield {
        "one_pairs_per_s": one.pairs_per_s,
        "two_pairs_per_s": two.pairs_per_s,
        "ratio": two.pairs_per_s / one.pairs_per_s,
    }


BULK_RECORD_DOCUMENTS = 64  # a re-indexing record: one query, its candidate passages
INTERACTIVE_SHARE = 0.25  # interactive jobs arrive at a pace that keeps the worker this busy


def priority(ctx: BenchContext) -> Iterator[Record]:
    """Interactive 1 x 20 jobs at a steady pace (using a quarter of the worker) on an idle worker,
    then while a bulk run keeps it saturated; and the bulk lane's own rate against the
    interactive pipeline's (as throughput measures it), on the same pairs, in the same run."""
    count, docs = ctx.samples(30, 20)
    pairs = ctx.job_count(300) * 8
    with serving(ctx.setup) as pipeline:
        interactive, _ = pipeline.run(make_jobs(pairs // 8, 8, PASSAGES))
        bulk = pipeline.bulk(make_jobs(max(1, pairs // BULK_RECORD_DOCUMENTS), BULK_RECORD_DOCUMENTS, PASSAGES))
        pace_s = statistics.median(pipeline.e2e_ms(job) for job in make_jobs(5, docs, PASSAGES)) / 1000
        pace_s /= INTERACTIVE_SHARE
        idle = pipeline.paced_ms(make_jobs(count, docs, PASSAGES), pace_s)
        with pipeline.bulk_running(lambda: make_jobs(1, BULK_RECORD_DOCUMENTS, PASSAGES)[0]) as bulk_pairs:
            started, pairs_before = time.perf_counter(), bulk_pairs()
            under_bulk = pipeline.paced_ms(make_jobs(count, docs, PASSAGES), pace_s)
            beside = (bulk_pairs() - pairs_before) / (time.perf_counter() - started)
    yield {
        "idle_ms_p95": percentile(idle, 95),
        "under_bulk_ms_p95": percentile(under_bulk, 95),
        "ratio": percentile(under_bulk, 95) / percentile(idle, 95),
        "bulk_pairs_per_s": bulk.pairs_per_s,
        "pipeline_pairs_per_s": interactive.pairs_per_s,
        "bulk_ratio": bulk.pairs_per_s / interactive.pairs_per_s,
        # bulk's rate while interactive jobs take their quarter (its batches are smaller then)
        "bulk_pairs_per_s_beside_interactive": beside,
        "interactive_every_ms": pace_s * 1000,
    }


def startup(ctx: BenchContext) -> Iterator[Record]:
    """What the model checks add to a worker's start: load + warm-up alone vs with every check
    (the golden-ranking check off: benchmark shapes carry random weights)."""
    from rerankq.core.settings import get_settings
    from rerankq.worker.loading import load_backend, load_checked, resolve_model

    manifest, device = resolve_model(ctx.setup.spec, None, get_settings()), ctx.setup.device
    plain, checked = [], []
    for _ in range(3):
        plain.append(_seconds(lambda: load_backend(manifest, device).warm_up()))
        checked.append(_seconds(lambda: load_checked(manifest, device, check_ranking=False).warm_up()))
    yield {
        "load_s_p50": statistics.median(plain),
        "checked_s_p50": statistics.median(checked),
        "check_cost_s": statistics.median(checked) - statistics.median(plain),
        "ratio": statistics.median(checked) / statistics.median(plain),
    }


def seed(ctx: BenchContext) -> Iterator[Record]:
    """rerankq's gateway vs the seed's recipe (FastAPI + one ``CrossEncoder``, ``predict`` per
    request), the same 1 x 20 requests from 1, 8 and 32 concurrent clients."""
    from rerankq.bench.seed_recipe import seed_comparison  # FastAPI and uvicorn: only this scenario

    yield from seed_comparison(ctx.setup, ctx.job_count(96), (1, 8, 32))


def brokers(ctx: BenchContext) -> Iterator[Record]:
    """The same jobs queued on Redis and on RabbitMQ, two workers each: pairs/s, 1 x 20 latency,
    and the time a backlog takes to finish after one worker is killed with SIGKILL. Needs the
    local RabbitMQ; not part of `all`."""
    from rerankq.bench.brokers import broker_comparison  # the RabbitMQ side: only this scenario

    yield from broker_comparison(ctx.setup, ctx.job_count(60), ctx.docs(8), ctx.samples(20, 20))


def tracing(ctx: BenchContext) -> Iterator[Record]:
    """The latency scenario's jobs with tracing off and on (every span exported), alternating
    rounds: what turning tracing on costs a job. Needs the otel extra; not part of `all`."""
    from rerankq.bench.tracing_cost import tracing_comparison  # OpenTelemetry's SDK: only this scenario

    yield from tracing_comparison(ctx.setup, ctx.samples(50, 20))


def backends(ctx: BenchContext) -> Iterator[Record]:
    """torch float32 vs its ONNX Runtime exports (float32, int8), on CPU, through the same batcher:
    pairs/s side by side (timed in alternating rounds, best round each), and how far each agrees
    with torch: largest raw-score difference on the timed pairs, Spearman and best-passage
    agreement on the golden set (meaningful text; the timed pairs are random words), and best
    passage, best three and per-job Spearman on the 208 close-candidate jobs built from it."""
    from rerankq.worker.golden import load_golden
    from rerankq.worker.model_diff import diff_models

    if ctx.setup.device != "cpu":
        return  # the ONNX backends run on CPU only
    jobs = make_jobs(ctx.job_count(48), ctx.docs(8), PASSAGES)
    models = {"torch": ctx.model} | {name: ctx.load_model(name) for name in EXPORTED}
    runs: dict[str, list[BatchedRun]] = {name: [] for name in models}
    for _ in range(ROUNDS):  # alternating, so a slower minute of the machine hits every backend
        for name, model in models.items():
            runs[name].append(model.batched(jobs, window=ctx.setup.concurrency))
    fastest = {name: max(run.timed.pairs_per_s for run in rounds) for name, rounds in runs.items()}
    golden = load_golden()
    for name in EXPORTED:
        agreement = diff_models(models["torch"].backend, models[name].backend, golden)
        yield {
            "backend": name,
            "torch_pairs_per_s": fastest["torch"],
            "pairs_per_s": fastest[name],
            "ratio": fastest[name] / fastest["torch"],
            "max_abs_diff": _largest_difference(runs["torch"][0].scores, runs[name][0].scores),
            "spearman": agreement.spearman,
            "top1": agreement.top1_agreement,
            **_close_fields(agreement.close),
            "pairs": total_pairs(jobs),
        }


def _close_fields(close: CloseAgreement | None) -> Record:
    """Agreement on close candidates: what a user sees of int8 is whether the top of a job moves."""
    assert close is not None  # diff_models measures them unless told not to
    return {
        "close_items": close.items,
        "close_top1": close.top1,
        "close_top3": close.top3,
        "close_spearman_per_item": close.spearman_per_item,
        "close_spearman": close.spearman,
    }


def quantization(ctx: BenchContext) -> Iterator[Record]:
    """The known ways to keep a ranking through int8, on the model's float32 ONNX export: every
    weight MatMul (int8 or uint8 weights), the last layers or the feed-forward down-projections
    kept float32, feed-forward or attention MatMuls only, static calibrated on the golden texts.
    Each: pairs/s against float32 ONNX through the same batcher (alternating rounds, best each),
    best passage, best three and per-job Spearman on the close candidates, golden Spearman. CPU
    only; not part of `all`."""
    from rerankq.bench.quantization import quantization_tradeoffs  # onnx: only this scenario

    if ctx.setup.device != "cpu":
        return  # the ONNX backends run on CPU only
    jobs = make_jobs(ctx.job_count(32), ctx.docs(8), PASSAGES, seed=7)
    yield from quantization_tradeoffs(ctx.load_model("onnx"), jobs, ctx.setup.concurrency)


PREFIX_DOCS = (16, 1)  # a job of first-stage candidates, and the worst case: nothing to share


def prefix(ctx: BenchContext) -> Iterator[Record]:
    """LLM rerankers: the prompt prefix a job's pairs share, computed once per job (the default)
    vs every pair computing its whole prompt, same jobs through the same batcher, in alternating
    rounds (best round each): pairs/s, tokens computed per pair (padding excluded), and the largest
    raw-score difference. Jobs of 16 documents of 32-128 words and of 1 document. LLM rerankers only."""
    settings = get_settings()
    if resolve_model(ctx.setup.spec, None, settings, ctx.setup.kind).template is None:
        return  # not an LLM reranker: no prompt to share
    models = {
        reuse: InProcessModel(
            ctx.setup.spec, ctx.setup.device, settings.model_copy(update={"llm_prefix_reuse": reuse}), ctx.setup.kind
        )
        for reuse in (True, False)
    }
    for docs in PREFIX_DOCS:
        jobs = make_jobs(ctx.job_count(4) * (1 if docs > 1 else 4), docs, PASSAGES, seed=docs)
        rounds = [[_prefix_run(model, jobs, ctx.setup.concurrency) for model in models.values()] for _ in range(2)]
        (on, on_tokens), (off, off_tokens) = rounds[0]
        best_on, best_off = (max(r[side][0].timed.pairs_per_s for r in rounds) for side in (0, 1))
        yield {
            "docs_per_job": docs,
            "pairs": on.timed.pairs,
            "reuse_pairs_per_s": best_on,
            "whole_pairs_per_s": best_off,
            "ratio": best_on / best_off,
            "tokens_per_pair_reuse": on_tokens,
            "tokens_per_pair_whole": off_tokens,
            "max_abs_score_diff": _largest_difference(on.scores, off.scores),
        }


def _prefix_run(model: InProcessModel, jobs: list[Job], window: int) -> tuple[BatchedRun, float]:
    """One run and the tokens it computed per pair: prompt prefixes (each computed once) plus each
    pair's own tokens with reuse, whole pairs without."""
    prefixes = getattr(model.backend, "prefixes", None)
    if prefixes is not None:
        prefixes.clear()
        prefixes.stats = PrefixStats()
    run = model.batched(jobs, window=window)
    pairs = total_pairs(jobs)
    if prefixes is None:
        return run, run.stats.real_tokens / pairs
    return run, (prefixes.stats.prefix_tokens_computed + prefixes.stats.pair_tokens) / pairs


def _largest_difference(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for got, want in zip(a, b, strict=True) for x, y in zip(got, want, strict=True))


def _seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


SCENARIOS: dict[str, Callable[[BenchContext], Iterator[Record]]] = {
    "throughput": throughput,
    "naive": naive,
    "mixed": mixed,
    "cache": cache,
    "latency": latency,
    "scale": scale,
    "priority": priority,
    "startup": startup,
    "seed": seed,
    "backends": backends,
    "brokers": brokers,
    "prefix": prefix,
    "quantization": quantization,
    "tracing": tracing,
}
# brokers needs a RabbitMQ, which `all` (and its smoke test) does not; quantization is a study
NOT_IN_ALL = {"brokers", "quantization", "tracing"}


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]
