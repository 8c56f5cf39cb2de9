"""A worker refuses a missing or broken model at start, with a message instead of a stack trace
(each broken export is in test_models_check)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rerankq import ModelLoadError
from rerankq.core.settings import get_settings
from rerankq.worker.loading import load_backend, resolve_model


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_folder_serves_under_its_name_unless_renamed(model_dirs: dict[str, Path]) -> None:
    settings = get_settings()
    assert resolve_model(str(model_dirs["tiny-bert"]), None, settings).name == "tiny-bert"
    assert resolve_model(str(model_dirs["tiny-bert"]), "custom", settings).name == "custom"
    assert resolve_model("bge-reranker-v2-m3", None, settings).source == "BAAI/bge-reranker-v2-m3"
    assert resolve_model("BAAI/bge-reranker-v2-m3", None, settings).name == "bge-reranker-v2-m3"


def _start_worker_cli(model: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rerankq", "worker", "--model", str(model), "--device", "cpu"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_exits_with_a_message_for_a_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "my_custom_model"
    result = _start_worker_cli(missing)
    assert result.returncode == 2
    assert f"model folder {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_names_the_missing_tokenizer(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(model_dirs["tiny-bert"], tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    result = _start_worker_cli(folder)
    assert result.returncode == 2
    assert "no tokenizer files" in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_model_that_cannot_be_fetched_is_explained() -> None:
    manifest = resolve_model("rerankq-test/does-not-exist", None, get_settings())
    with pytest.raises(ModelLoadError, match=r"not in the local Hugging Face cache, and HF_HUB_OFFLINE=1.*all-minilm"):
        load_backend(manifest, "cpu")


def test_max_length_truncates_like_the_reference_and_is_capped_by_the_model(model_dirs: dict[str, Path]) -> None:
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    manifest = resolve_model(str(model_dirs["tiny-bert"]), None, get_settings())
    backend = load_backend(manifest, "cpu", 16)
    long_doc = "a cross-encoder reads the query and the document together " * 20
    pairs = backend.encode("what is a reranker", [long_doc, "short"], backend.limits())
    assert backend.max_length == 16 and max(p.length for p in pairs) == 16
    reference = CrossEncoder(str(model_dirs["tiny-bert"]), device="cpu", max_length=16)
    expected = reference.predict(
        [("what is a reranker", long_doc), ("what is a reranker", "short")], activation_fn=torch.nn.Identity()
    )
    np.testing.assert_allclose(backend.forward(pairs), expected, atol=1e-5)
    assert load_backend(manifest, "cpu", 100_000).max_length == manifest.model_max_length


def test_model_identity_changes_with_weights_and_max_length(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from rerankq.testing.model_shapes import build_tiny_bert
    from rerankq.worker.loading import model_identity

    settings = get_settings()
    manifest = resolve_model(str(model_dirs["tiny-bert"]), "same-name", settings)
    retrained = resolve_model(str(build_tiny_bert(tmp_path / "retrained", seed=7)), "same-name", settings)
    backend = load_backend(manifest, "cpu", 64)
    identity = model_identity(manifest, backend, 0.75)
    assert identity == model_identity(manifest, load_backend(manifest, "cpu", 64), 0.75)
    assert identity != model_identity(retrained, load_backend(retrained, "cpu", 64), 0.75)
    assert identity != model_identity(manifest, load_backend(manifest, "cpu", 32), 0.75)
    assert identity != model_identity(manifest, backend, 0.5)  # the query's share changes scores too


# Celery orders consumer steps with equal requirements by hash order: each seed is a worker start
_STEP_ORDER = """
from celery.worker.consumer.consumer import Consumer
from rerankq.core.settings import Settings
from rerankq.worker.app import create_worker_app
from rerankq.worker.heartbeat import presence_step
from rerankq.worker.lane_gate import lane_gate_step

app = create_worker_app(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"), "m")
app.steps["consumer"].add(lane_gate_step(None))
app.steps["consumer"].add(presence_step(None))
blueprint = Consumer.Blueprint(steps=app.steps["consumer"])
blueprint.steps = blueprint.claim_steps()
print(" ".join(step.__name__ for step in blueprint._finalize_steps(blueprint.steps)))
"""


@pytest.mark.parametrize("hash_seed", range(3))  # seed 1 put the two out of order on Celery 5.7
def test_a_worker_is_announced_only_once_it_answers_control_commands(hash_seed: int) -> None:
    """The presence entry (what tests and operators use to find a worker to send ``cancel_consumer``
    to) is written after Celery's remote-control step listens, whatever order Celery draws."""
    env = {"PYTHONHASHSEED": str(hash_seed), "PATH": "/usr/bin:/bin"}
    order = subprocess.run([sys.executable, "-c", _STEP_ORDER], capture_output=True, text=True, env=env, check=True)
    steps = order.stdout.split()
    assert steps.index("Control") < steps.index("Presence") < steps.index("Evloop"), steps
