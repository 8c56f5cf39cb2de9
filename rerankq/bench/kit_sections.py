"""The GPU kit's measurements: one function per section of the report (rerankq.bench.kit runs
each in its own time-boxed process). The same code runs at full size on a GPU and, with
``--dry-run``, at tiny sizes on a CPU, so the report's shape is tested where no GPU is.

    python -m rerankq.bench.kit_sections SECTION CONFIG.json RESULT.json
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import CrossEncoder

from rerankq.bench.flops import ModelShape, mfu, peak_tflops
from rerankq.bench.inprocess import InProcessModel
from rerankq.bench.pipeline import WorkerSetup, serving
from rerankq.bench.scenarios import BenchContext, latency
from rerankq.bench.workload import Job, log_normal, make_jobs, uniform
from rerankq.core.registry import ModelKind
from rerankq.core.settings import Settings, get_settings
from rerankq.producer.client import RerankClient
from rerankq.testing.llm_shapes import build_qwen3_reranker_shape, build_tiny_qwen3_reranker
from rerankq.testing.model_shapes import build_tiny_bert, build_xlmr_shape
from rerankq.testing.processes import running_workers
from rerankq.worker.backends import Backend, CrossEncoderBackend, EncodedPair

Section = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """How much each section measures: full on a GPU, tiny in a dry run."""

    lengths: tuple[int, ...]  # tokens per pair in throughput
    forward_pairs: int  # pairs per length for the raw forward pass
    pipeline_jobs: int  # jobs of ``docs_per_job`` per length through SDK → Redis → worker
    docs_per_job: int
    mixed_pairs: int  # length-sorted vs arrival order
    drift_queries: int
    drift_docs: int
    drill_jobs: int
    drill_docs: int
    long_tokens: int
    long_pairs: int
    latency_jobs: int
    seed_jobs: int  # jobs of 20 documents per client count
    clients: tuple[int, ...]
    llm_words: tuple[int, ...]  # words per document for the LLM reranker (its prompt comes on top)
    llm_jobs: int  # jobs of ``docs_per_job`` per length


FULL = Sizes((128, 512), 4096, 256, 32, 4096, 64, 16, 8, 64, 8192, 32, 100, 192, (1, 8, 32), (100, 700), 32)
DRY = Sizes((32, 64), 64, 4, 8, 64, 4, 8, 4, 16, 512, 4, 5, 8, (1, 8, 32), (20, 60), 2)


@dataclass(frozen=True)
class Kit:
    """What every section gets from the kit's runner (a JSON file between the two processes)."""

    dry_run: bool
    device: str
    redis_url: str
    work: Path
    main_model: Path  # bge-reranker-v2-m3's shape (a tiny BERT in a dry run)
    drill_model: Path
    llm_model: Path  # Qwen3-Reranker-0.6B's shape (a tiny Qwen3 reranker in a dry run)

    @property
    def sizes(self) -> Sizes:
        return DRY if self.dry_run else FULL

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(0) if self.device.startswith("cuda") else "cpu"

    def setup(self, spec: Path, name: str, run: str) -> WorkerSetup:
        return WorkerSetup(self.redis_url, str(spec), name, self.device, 32, self.work / "logs" / run)


def prepare(kit: Kit) -> Section:
    """Build the models (random weights, real architectures) once for every section."""
    started = time.perf_counter()
    if kit.dry_run:  # the BERT family's WordPiece: one workload word is one token, as in the full run
        build_tiny_bert(kit.main_model, max_position_embeddings=1024)
        build_tiny_bert(kit.drill_model, max_position_embeddings=1024, seed=1)
        build_tiny_qwen3_reranker(kit.llm_model)
    else:
        build_xlmr_shape(kit.main_model, "bge-reranker-v2-m3")
        build_xlmr_shape(kit.drill_model, "xlmr-drill")
        build_qwen3_reranker_shape(kit.llm_model)
    names = {name: getattr(kit, name).name for name in ("main_model", "drill_model", "llm_model")}
    return names | {"seconds": _since(started)}


# --- throughput -------------------------------------------------------------------------------


def throughput(kit: Kit) -> Section:
    """Raw forward vs the batcher in-process vs the pipeline at each length; MFU; then, at the
    longest length, sdpa vs eager attention and fp16 vs bf16; and length-sorted vs arrival order."""
    model = InProcessModel(str(kit.main_model), kit.device, get_settings())
    section: Section = {"device_name": kit.device_name, "peak_tflops": peak_tflops(kit.device_name)}
    workloads = {f"tokens_{length}": _jobs_of_length(kit, length) for length in kit.sizes.lengths}
    section |= _raw_and_pipeline(kit, model, kit.setup(kit.main_model, "kit-main", "throughput"), workloads)
    longest = max(kit.sizes.lengths)
    section["attention"] = _variants(kit, model, longest, [("sdpa", "float16"), ("eager", "float16")])
    section["dtype"] = _variants(kit, model, longest, [("sdpa", "float16"), ("sdpa", "bfloat16")])
    section["order"] = _sorted_vs_arrival(kit, model)
    return section


def _jobs_of_length(kit: Kit, tokens: int) -> list[Job]:
    """Jobs whose pairs hold close to ``tokens`` tokens (one workload word is one token)."""
    return make_jobs(kit.sizes.pipeline_jobs, kit.sizes.docs_per_job, uniform(tokens - 24, tokens - 14), seed=tokens)


def _raw_and_pipeline(kit: Kit, model: InProcessModel, setup: WorkerSetup, workloads: dict[str, list[Job]]) -> Section:
    """Each workload's raw side in-process, then the same jobs through SDK -> Redis -> worker:
    pairs/s, the ratio to the raw forward pass, MFU of both, and the pipeline's padding."""
    shape = ModelShape.of(model.backend.model.config)  # type: ignore[attr-defined]
    raw = {key: _raw_side(kit, model, shape, jobs) for key, jobs in workloads.items()}
    section: Section = {}
    with serving(setup) as pipeline:
        for key, jobs in workloads.items():
            timed, _ = pipeline.run(jobs)
            section[key] = raw[key] | {
                "pipeline_pairs_per_s": timed.pairs_per_s,
                "ratio": timed.pairs_per_s / raw[key]["forward_pairs_per_s"],
                "pipeline_mfu": mfu(shape, _lengths(model, jobs), timed.seconds, kit.device_name),
            }
    return section | {"padding_ratio_pipeline": pipeline.padding_ratio}


def _raw_side(kit: Kit, model: InProcessModel, shape: ModelShape, jobs: list[Job]) -> Section:
    pairs = _encode(model.backend, jobs)[: kit.sizes.forward_pairs]
    budget, pairs_cap = model.token_budget, model.settings.batch_pairs_for(kit.device)
    seconds = _forward_seconds(model.backend, pairs, budget, pairs_cap)
    wide = _forward_seconds(model.backend, pairs, 4 * budget, 4 * pairs_cap)
    batched = model.batched(jobs, window=32)
    lengths = [pair.length for pair in pairs]
    return {
        "mean_tokens": statistics.fmean(lengths),
        "forward_pairs_per_s": len(pairs) / seconds,
        "forward_mfu": mfu(shape, lengths, seconds, kit.device_name),
        "forward_4x_budget_pairs_per_s": len(pairs) / wide,
        "batcher_pairs_per_s": batched.timed.pairs_per_s,
    }


def _forward_seconds(backend: Backend, pairs: list[EncodedPair], token_budget: int, pairs_cap: int) -> float:
    """Length-sorted batches cut as the worker cuts them (pairs cap, padded-token budget),
    tokenisation excluded; the first batch runs twice (kernel choice, allocator)."""
    return _timed_batches(backend, _cut(sorted(pairs, key=lambda pair: pair.length), token_budget, pairs_cap))


def _cut(pairs: list[EncodedPair], token_budget: int, pairs_cap: int) -> list[list[EncodedPair]]:
    batches: list[list[EncodedPair]] = [[]]
    for pair in pairs:
        batch = batches[-1]
        if batch and (len(batch) >= pairs_cap or (len(batch) + 1) * max(pair.length, batch[-1].length) > token_budget):
            batches.append(batch := [])
        batch.append(pair)
    return batches


def _variants(kit: Kit, model: InProcessModel, tokens: int, variants: list[tuple[str, str]]) -> Section:
    jobs = make_jobs(max(1, kit.sizes.forward_pairs // 16), 16, uniform(tokens - 24, tokens - 14), seed=7)
    pairs = _encode(model.backend, jobs)
    budget, pairs_cap = model.token_budget, model.settings.batch_pairs_for(kit.device)
    rates: Section = {}
    for attention, dtype in variants:
        with _variant(kit, attention, dtype) as backend:
            rates[f"{attention}_{dtype}_pairs_per_s"] = len(pairs) / _forward_seconds(backend, pairs, budget, pairs_cap)
    first, second = rates.values()
    return rates | {"ratio": second / first, "tokens": tokens}


@contextmanager
def _variant(kit: Kit, attention: str, dtype: str) -> Iterator[CrossEncoderBackend]:
    """The main model loaded with another attention implementation or dtype, freed afterwards."""
    kwargs = {"attn_implementation": attention, "dtype": getattr(torch, dtype)}
    model = CrossEncoder(str(kit.main_model), device=kit.device, model_kwargs=kwargs)
    try:
        yield CrossEncoderBackend(model, kit.device, model.max_length)
    finally:
        del model
        if kit.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _sorted_vs_arrival(kit: Kit, model: InProcessModel) -> Section:
    """Mixed lengths, the same pairs: batches of pairs in arrival order (each padded to its
    longest) vs length-sorted batches, the same pairs cap."""
    jobs = make_jobs(max(1, kit.sizes.mixed_pairs // 16), 16, log_normal(20, 500), seed=11)
    pairs, cap = _encode(model.backend, jobs), model.settings.batch_pairs_for(kit.device)
    arrival = [pairs[start : start + cap] for start in range(0, len(pairs), cap)]
    ordered = sorted(pairs, key=lambda pair: pair.length)
    by_length = [ordered[start : start + cap] for start in range(0, len(ordered), cap)]
    seconds = {
        name: _timed_batches(model.backend, batches) for name, batches in [("arrival", arrival), ("sorted", by_length)]
    }
    return {
        "arrival_pairs_per_s": len(pairs) / seconds["arrival"],
        "sorted_pairs_per_s": len(pairs) / seconds["sorted"],
        "ratio": seconds["arrival"] / seconds["sorted"],
        "padding_ratio": {"arrival": _padding(arrival), "sorted": _padding(by_length)},
    }


def _timed_batches(backend: Backend, batches: list[list[EncodedPair]]) -> float:
    """The batches' forward time; the first runs once before the clock (kernel choice, allocator)."""
    backend.forward(batches[0])
    started = time.perf_counter()
    for batch in batches:
        backend.forward(batch)  # returns Python floats: the device has finished
    return time.perf_counter() - started


def _padding(batches: list[list[EncodedPair]]) -> float:
    real = sum(pair.length for batch in batches for pair in batch)
    return sum(len(batch) * max(pair.length for pair in batch) for batch in batches) / real


# --- score drift ------------------------------------------------------------------------------


def score_drift(kit: Kit) -> Section:
    """fp16 and bf16 against fp32 on the same pairs: largest difference, Spearman, top-1."""
    from scipy.stats import spearmanr

    jobs = make_jobs(kit.sizes.drift_queries, kit.sizes.drift_docs, log_normal(20, 500), seed=3)
    scores: dict[str, list[list[float]]] = {}
    for dtype in ("float32", "float16", "bfloat16"):
        with _variant(kit, "sdpa", dtype) as backend:
            scores[dtype] = [backend.forward(_encode(backend, [job])) for job in jobs]
    reference = scores.pop("float32")
    section: Section = {"pairs": sum(map(len, reference)), "fp32_score_std": statistics.pstdev(_flat(reference))}
    for dtype, got in scores.items():
        rhos = [float(spearmanr(a, b).statistic) for a, b in zip(got, reference, strict=True)]
        section[dtype] = {
            "max_abs_diff": max(abs(a - b) for a, b in zip(_flat(got), _flat(reference), strict=True)),
            "spearman_mean": statistics.fmean(0.0 if math.isnan(rho) else rho for rho in rhos),
            "spearman_min": min(0.0 if math.isnan(rho) else rho for rho in rhos),
            "top1_agreement": statistics.fmean(_top(a) == _top(b) for a, b in zip(got, reference, strict=True)),
        }
    return section


def _flat(rows: list[list[float]]) -> list[float]:
    return [value for row in rows for value in row]


def _top(scores: list[float]) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


# --- out-of-memory drill ----------------------------------------------------------------------


DRILL_QUERY = "drill query"


def oom_drill(kit: Kit) -> Section:
    """A worker that cannot fit its batches (they split) and one pair that never fits (the job
    moves to a CPU worker): jobs lost, which device served, scores against the CPU's."""
    jobs = make_jobs(kit.sizes.drill_jobs, kit.sizes.drill_docs, uniform(40, 60), seed=5)
    jobs.append(Job(DRILL_QUERY, ["a short one", " ".join(["word"] * kit.sizes.long_tokens)]))
    cap, limit = _drill_cap(kit, jobs)
    device_setup = kit.setup(kit.drill_model, "kit-drill", "oom-drill")
    cpu_setup = replace(device_setup, device="cpu", run_dir=device_setup.run_dir / "cpu")
    common = ("--name", device_setup.model, "--max-length", str(kit.sizes.long_tokens))
    env = {"RERANKQ_REDIS_URL": kit.redis_url, "RERANKQ_CHECK_RANKING": "false"}
    with (
        running_workers(
            device_setup.spec,
            device_setup.run_dir,
            1,
            *common,
            "--lanes",
            "interactive",
            device=kit.device,
            env=env | limit,
        ) as workers,
        running_workers(cpu_setup.spec, cpu_setup.run_dir, 1, *common, "--lanes", "cpu", device="cpu", env=env),
        RerankClient(kit.redis_url) as client,
    ):
        handles = [
            client.submit(job.query, job.documents, model=device_setup.model, normalize=False, cache=False)
            for job in jobs
        ]
        outcomes = [_outcome(handle) for handle in handles]
    reference = InProcessModel(str(kit.drill_model), "cpu", _long_settings(kit)).backend
    served = {i: outcome for i, outcome in enumerate(outcomes) if not isinstance(outcome, str)}
    diffs = [
        max(abs(a - b) for a, b in zip(scores, reference.forward(_encode(reference, [jobs[i]])), strict=True))
        for i, (_, scores) in served.items()
    ]
    return cap | {
        "jobs": len(jobs),
        "lost": sum(isinstance(outcome, str) for outcome in outcomes),
        "errors": [outcome for outcome in outcomes if isinstance(outcome, str)][:3],
        "served_on_device": sum(moved is None for moved, _ in served.values()),
        "moved_to_cpu": sum(moved is not None for moved, _ in served.values()),
        "oom_splits": workers[0].log().count('"event": "oom"'),
        "max_abs_diff_vs_cpu": max(diffs, default=None),
    }


def _outcome(handle: Any) -> tuple[str | None, list[float]] | str:
    """(the device it was moved from, if it was; its scores) or, for a lost job, why."""
    try:
        result = handle.result(timeout=240)
    except Exception as e:  # a lost job is what the drill counts
        return f"{type(e).__name__}: {e}"
    return result.rerouted_from, [doc.score for doc in sorted(result.results, key=lambda d: d.index)]


def _drill_cap(kit: Kit, jobs: list[Job]) -> tuple[Section, dict[str, str]]:
    """How the device worker is limited. On a GPU: a memory fraction between what one batch
    of a few short pairs needs and what the long pair needs, measured here first. In a dry run:
    the worker's fault injection raises the real OutOfMemoryError at token limits."""
    if not kit.device.startswith("cuda"):
        env = {
            "RERANKQ_FAULT_OOM_BATCH_TOKENS": "400",
            "RERANKQ_FAULT_OOM_PAIR_TOKENS": str(kit.sizes.long_tokens // 2),
        }
        return {"mode": "injected", "batch_tokens": 400, "pair_tokens": kit.sizes.long_tokens // 2}, env
    model = InProcessModel(str(kit.drill_model), kit.device, _long_settings(kit))
    weights = torch.cuda.memory_reserved()
    few = _peak_extra(model.backend, _encode(model.backend, jobs[:1])[:8], weights)
    long = _peak_extra(model.backend, _encode(model.backend, jobs[-1:])[-1:], weights)
    allowed = weights + math.sqrt(few * long)  # geometric middle: a few short pairs fit, the long one does not
    total = torch.cuda.get_device_properties(0).total_memory
    del model
    torch.cuda.empty_cache()
    section = {"mode": "memory_fraction", "fraction": allowed / total, "allowed_mb": allowed / 2**20}
    section |= {"weights_mb": weights / 2**20, "eight_pairs_mb": few / 2**20, "long_pair_mb": long / 2**20}
    return section, {"RERANKQ_GPU_MEMORY_FRACTION": f"{allowed / total:.6f}"}


def _peak_extra(backend: Backend, pairs: list[EncodedPair], weights: int) -> float:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    backend.forward(pairs)
    return float(torch.cuda.max_memory_reserved() - weights)


def _long_settings(kit: Kit) -> Settings:
    return get_settings().model_copy(update={"max_length": kit.sizes.long_tokens})


# --- long documents ---------------------------------------------------------------------------


def long_mode(kit: Kit) -> Section:
    """Pairs of the model's full length (8192 tokens for bge-reranker-v2-m3): pairs/s, peak memory."""
    model = InProcessModel(str(kit.main_model), kit.device, _long_settings(kit))
    words = kit.sizes.long_tokens + 64  # cut to the limit by the tokenizer
    jobs = make_jobs(kit.sizes.long_pairs, 1, uniform(words, words), seed=13)
    if kit.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run = model.batched(jobs, window=len(jobs))
    peak = torch.cuda.max_memory_allocated() / 2**20 if kit.device.startswith("cuda") else None
    return {
        "tokens": model.backend.max_length,
        "pairs_per_s": run.timed.pairs_per_s,
        "pairs": run.timed.pairs,
        "peak_memory_mb": peak,
    }


# --- an LLM reranker --------------------------------------------------------------------------


def llm(kit: Kit) -> Section:
    """Qwen3-Reranker-0.6B's shape as a worker serves it (bf16 on CUDA, prompt included in every
    pair): the raw forward pass and its MFU, and the pipeline's pairs/s, at two lengths."""
    model = InProcessModel(str(kit.llm_model), kit.device, get_settings(), LLM_KIND)
    section: Section = {"dtype": str(model.backend.model.dtype).removeprefix("torch.")}  # type: ignore[attr-defined]
    workloads = {f"words_{words}": _llm_jobs(kit, words) for words in kit.sizes.llm_words}
    setup = replace(kit.setup(kit.llm_model, "kit-llm", "llm"), kind=LLM_KIND)
    section |= _raw_and_pipeline(kit, model, setup, workloads)
    return section | _whole_prompt(kit, workloads, section)


def _whole_prompt(kit: Kit, workloads: dict[str, list[Job]], section: Section) -> Section:
    """The batcher again with every pair computing its whole prompt (RERANKQ_LLM_PREFIX_REUSE=false;
    the figures above reuse each job's prompt prefix): the reuse's gain in bf16."""
    settings = get_settings().model_copy(update={"llm_prefix_reuse": False})
    whole = InProcessModel(str(kit.llm_model), kit.device, settings, LLM_KIND)
    out: Section = {}
    for key, jobs in workloads.items():
        pairs_per_s = whole.batched(jobs, window=32).timed.pairs_per_s
        out[key] = section[key] | {
            "whole_prompt_batcher_pairs_per_s": pairs_per_s,
            "prefix_reuse_ratio": section[key]["batcher_pairs_per_s"] / pairs_per_s,
        }
    return out


LLM_KIND: ModelKind = "qwen3-reranker"


def _llm_jobs(kit: Kit, words: int) -> list[Job]:
    return make_jobs(kit.sizes.llm_jobs, kit.sizes.docs_per_job, uniform(words - 10, words + 10), seed=words)


# --- latency and the seed recipe --------------------------------------------------------------


def latency_section(kit: Kit) -> Section:
    """1 x 20 jobs one at a time on an idle worker: end to end against compute alone."""
    model = InProcessModel(str(kit.main_model), kit.device, get_settings())
    ctx = BenchContext(kit.setup(kit.main_model, "kit-main", "latency"), kit.sizes.latency_jobs, 20, lambda _: model)
    return next(latency(ctx))


def vs_seed_recipe(kit: Kit) -> Section:
    """rerankq's gateway against the seed's FastAPI + CrossEncoder service, same clients."""
    from rerankq.bench.seed_recipe import seed_comparison  # FastAPI: only this section needs it

    setup = kit.setup(kit.main_model, "kit-main", "seed")
    return {f"clients_{r['clients']}": r for r in seed_comparison(setup, kit.sizes.seed_jobs, kit.sizes.clients)}


# --- shared -----------------------------------------------------------------------------------


def _encode(backend: Backend, jobs: Sequence[Job]) -> list[EncodedPair]:
    return [pair for job in jobs for pair in backend.encode(job.query, job.documents, backend.limits())]


def _lengths(model: InProcessModel, jobs: Sequence[Job]) -> list[int]:
    return [pair.length for pair in _encode(model.backend, jobs)]


def _since(started: float) -> float:
    return time.perf_counter() - started


SECTIONS: dict[str, Callable[[Kit], Section]] = {
    "prepare": prepare,
    "throughput": throughput,
    "score_drift": score_drift,
    "oom_drill": oom_drill,
    "long_mode": long_mode,
    "latency": latency_section,
    "vs_seed_recipe": vs_seed_recipe,
    "llm": llm,
}


def main(argv: list[str]) -> int:
    name, config, result = argv
    raw = json.loads(Path(config).read_text())
    folders = (Path(raw[key]) for key in ("work", "main_model", "drill_model", "llm_model"))
    kit = Kit(raw["dry_run"], raw["device"], raw["redis_url"], *folders)
    Path(result).write_text(json.dumps(SECTIONS[name](kit)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
