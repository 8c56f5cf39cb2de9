"""`rerankq bench all` at tiny sizes, so the benchmark suite cannot rot. Asserts only that every
scenario produces every promised field and writes docs/BENCHMARKS.md; never a timing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.slow]

FIELDS = {
    "throughput": {"raw_pairs_per_s", "pipeline_pairs_per_s", "ratio"},
    "naive": {"naive_pairs_per_s", "pipeline_pairs_per_s", "ratio", "docs_per_job"},
    "mixed": {"baseline_pairs_per_s", "pipeline_pairs_per_s", "ratio", "padding_ratio"},
    "cache": {"cold_ms_p50", "warm_ms_p50", "warm_ms_p99", "speedup"},
    "latency": {"compute_ms_p50", "e2e_ms_p50", "e2e_ms_p99", "overhead_ms_p50"},
    "scale": {"one_pairs_per_s", "two_pairs_per_s", "ratio"},
    "priority": {"idle_ms_p95", "under_bulk_ms_p95", "ratio", "bulk_pairs_per_s", "pipeline_pairs_per_s", "bulk_ratio"},
    "startup": {"load_s_p50", "checked_s_p50", "check_cost_s", "ratio"},
    "seed": {"clients", "seed_pairs_per_s", "rerankq_pairs_per_s", "ratio", "seed_ms_p50", "rerankq_ms_p99"},
    "backends": {"backend", "torch_pairs_per_s", "pairs_per_s", "ratio", "max_abs_diff", "spearman", "top1"},
}


@pytest.mark.timeout(1200)  # nine scenarios, each starting real workers: minutes on a slow or busy machine
def test_every_scenario_produces_its_fields(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RERANKQ_REDIS_URL"}  # the bench starts its own Redis
    env["RERANKQ_SHAPES_DIR"] = str(tmp_path / "shapes")
    command = [sys.executable, "-m", "rerankq", "bench", "all", "--shape", "tiny-bert", "--jobs", "6", "--json"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1100)
    assert run.returncode == 0, run.stderr[-4000:]

    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert {record["scenario"] for record in records} == set(FIELDS)
    assert sorted(r["docs_per_job"] for r in records if r["scenario"] == "naive") == [1, 8]
    assert sorted(r["clients"] for r in records if r["scenario"] == "seed") == [1, 8, 32]
    assert sorted(r["backend"] for r in records if r["scenario"] == "backends") == ["onnx", "onnx-int8"]
    for record in records:
        assert FIELDS[record["scenario"]] <= record.keys(), record
        numbers = [v for k, v in record.items() if k in FIELDS[record["scenario"]] and isinstance(v, float)]
        assert all(math.isfinite(v) for v in numbers), record
    assert all(value > 0 for value in records[0]["padding_ratio"].values())

    written = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "shape tiny-bert" in written and "| throughput |" in written and "| scale |" in written


PREFIX_FIELDS = {"reuse_pairs_per_s", "whole_pairs_per_s", "ratio", "tokens_per_pair_reuse", "tokens_per_pair_whole"}


def test_the_prefix_scenario_compares_reuse_with_whole_prompts(tmp_path: Path) -> None:
    """`rerankq bench prefix` on the tiny Qwen3 reranker: both sides for 16- and 1-document jobs;
    16-document jobs compute fewer tokens a pair with reuse, 1-document jobs as many; scores equal."""
    env = {k: v for k, v in os.environ.items() if k != "RERANKQ_REDIS_URL"} | {"RERANKQ_SHAPES_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "rerankq", "bench", "prefix", "--shape", "tiny-qwen3-reranker", "--jobs", "1"]
    run = subprocess.run([*command, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]

    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    records = {r["docs_per_job"]: r for r in lines if r["scenario"] == "prefix"}
    assert set(records) == {1, 16} and all(r.keys() >= PREFIX_FIELDS for r in records.values())
    assert records[16]["tokens_per_pair_reuse"] < records[16]["tokens_per_pair_whole"]
    assert records[1]["tokens_per_pair_reuse"] == records[1]["tokens_per_pair_whole"]
    assert all(r["max_abs_score_diff"] < 1e-4 for r in records.values())


QUANTIZATION_FIELDS = {"variant", "pairs_per_s", "float32_pairs_per_s", "ratio", "close_top1", "close_top3"}


def test_the_quantization_scenario_measures_every_variant_that_applies(tmp_path: Path) -> None:
    """`rerankq bench quantization` on the tiny BERT (two layers: keeping the last two float32
    would keep everything, so that variant is skipped): speed and close-candidate agreement each."""
    env = {k: v for k, v in os.environ.items() if k != "RERANKQ_REDIS_URL"} | {
        "RERANKQ_SHAPES_DIR": str(tmp_path / "shapes"),
        "RERANKQ_ONNX_DIR": str(tmp_path / "onnx"),
    }
    command = [sys.executable, "-m", "rerankq", "bench", "quantization", "--shape", "tiny-bert", "--jobs", "2"]
    run = subprocess.run([*command, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]

    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    variants = {record["variant"] for record in records}
    assert len(variants) == len(records) == 7 and "last two layers kept float32" not in variants
    assert any(name.startswith("static") for name in variants)
    for record in records:
        assert record.keys() >= QUANTIZATION_FIELDS and record["close_items"] >= 200, record
        assert 0 <= record["close_top1"] <= 1 and record["pairs_per_s"] > 0 and math.isfinite(record["ratio"])
