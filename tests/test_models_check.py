"""`rerankq models check`: every failure made with a deliberately broken tiny model, its message
asserted; the checks run in order and stop at the first failure; the worker refuses the same models."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from model_support import (
    broken_copy,
    build_trained_reranker,
    corrupt_tokenizer,
    edit_config,
    remove_tokenizer,
    save_base_model,
    save_two_labels,
    set_head,
)
from typer.testing import CliRunner

from rerankq.cli.app import app
from rerankq.core.settings import get_settings
from rerankq.errors import ModelCheckFailed
from rerankq.worker.golden import DEFAULT_GOLDEN, GoldenSetError, load_golden
from rerankq.worker.loading import load_checked, resolve_model
from rerankq.worker.validation import Passed

runner = CliRunner()


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_trained_reranker(tmp_path_factory.mktemp("validator") / "good-reranker")


def check(folder: Path, **options: object) -> list[Passed]:
    passed: list[Passed] = []
    manifest = resolve_model(str(folder), None, get_settings())
    load_checked(manifest, "cpu", report=passed.append, **options)  # type: ignore[arg-type]
    return passed


def test_a_good_model_passes_every_check_in_order(good_model: Path) -> None:
    assert [p.check for p in check(good_model)] == [
        "config",
        "tokenizer",
        "weights",
        "architecture",
        "outputs",
        "ranking",
    ]


BREAKAGES: dict[str, tuple[Callable[[Path], None], str, list[str]]] = {
    # id: (breakage, the failing check, phrases its message must hold)
    "no-config": (lambda p: (p / "config.json").unlink(), "config", ["has no config.json", "save_pretrained"]),
    "bad-config": (lambda p: (p / "config.json").write_text("{not json"), "config", ["is not valid JSON"]),
    "not-a-transformers-config": (
        lambda p: (p / "config.json").write_text('{"hidden": 3}'),
        "config",
        ["no model_type"],
    ),
    "no-tokenizer": (remove_tokenizer, "tokenizer", ["no tokenizer files", "tokenizer.save_pretrained"]),
    "broken-tokenizer": (corrupt_tokenizer, "tokenizer", ["does not load"]),
    "no-weights": (lambda p: (p / "model.safetensors").unlink(), "weights", ["has no weights", "model.safetensors"]),
    "no-ranking-head": (
        save_base_model,
        "weights",
        ["lacks 2 weights", "classifier.bias, classifier.weight", "BertModel, which has no ranking head"],
    ),
    "config-of-another-size": (
        lambda p: edit_config(p, intermediate_size=48),
        "weights",
        ["another shape than config.json implies", "intermediate.dense"],
    ),
    "not-a-sequence-classifier": (
        lambda p: edit_config(p, architectures=["BertForMaskedLM"]),
        "architecture",
        ["names BertForMaskedLM, not a sequence classifier"],
    ),
    "two-labels": (save_two_labels, "architecture", ["num_labels = 2", "num_labels=1"]),
    "nan-scores": (
        lambda p: set_head(p, lambda w: w, lambda b: torch.full_like(b, math.nan)),
        "outputs",
        ["26 of 26 golden pairs scored NaN or infinity"],
    ),
    "all-zero": (
        lambda p: set_head(p, torch.zeros_like, torch.zeros_like),
        "outputs",
        ["all 26 golden pairs scored 0", "ranking head is zero"],
    ),
    "constant": (
        lambda p: set_head(p, torch.zeros_like, lambda b: torch.full_like(b, 0.75)),
        "outputs",
        ["all 26 golden pairs scored the same (0.75)", "ignores its input"],
    ),
    "reversed": (
        lambda p: set_head(p, torch.neg, torch.neg),
        "ranking",
        ["13 of 13 golden items ranked the wrong way round", "zh-apple-phone (zh)", "'苹果手机'", "labels flipped"],
    ),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_each_broken_export_fails_its_check_with_a_fix(good_model: Path, tmp_path: Path, case: str) -> None:
    breakage, failing, phrases = BREAKAGES[case]
    folder = broken_copy(good_model, tmp_path / case, breakage)
    passed: list[Passed] = []
    with pytest.raises(ModelCheckFailed) as raised:
        load_checked(resolve_model(str(folder), None, get_settings()), "cpu", report=passed.append)
    error = raised.value
    assert error.check == failing
    for phrase in phrases:
        assert phrase in str(error)
    assert error.fix  # every failure says how to fix it
    order = ["config", "tokenizer", "weights", "architecture", "outputs", "ranking"]
    assert [p.check for p in passed] == order[: order.index(failing)]  # stopped at the first failure


def test_one_wrong_language_points_at_the_manifest_languages(good_model: Path, tmp_path: Path) -> None:
    """A model that ranks English right and one Chinese item wrong: the fix names the language."""
    golden = tmp_path / "golden.jsonl"
    lines = DEFAULT_GOLDEN.read_text(encoding="utf-8").splitlines()
    swapped = (
        lines[-1].replace('"relevant"', '"tmp"').replace('"irrelevant"', '"relevant"').replace('"tmp"', '"irrelevant"')
    )
    golden.write_text("\n".join([*lines[:-1], swapped]), encoding="utf-8")
    with pytest.raises(ModelCheckFailed, match="1 of 13 golden items") as raised:
        check(good_model, golden=load_golden(golden))
    assert "zh-train-tickets" in raised.value.problem and "languages = [" in raised.value.fix
    english_only = resolve_model(str(good_model), None, get_settings()).model_copy(update={"languages": ["en"]})
    passed: list[Passed] = []
    load_checked(english_only, "cpu", golden=load_golden(golden), report=passed.append)
    assert passed[-1].detail.startswith("8 golden items ranked the right way round (en)")


def test_cli_exit_status_and_messages(good_model: Path, tmp_path: Path) -> None:
    ok = runner.invoke(app, ["models", "check", "--model", str(good_model), "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("✓") == 6 and "all checks passed" in ok.output
    reversed_model = broken_copy(good_model, tmp_path / "reversed", BREAKAGES["reversed"][0])
    failed = runner.invoke(app, ["models", "check", "--model", str(reversed_model), "--device", "cpu"])
    assert failed.exit_code == 1
    assert "✗ ranking" in failed.output and "fix:" in failed.output and failed.output.count("✓") == 5
    missing = runner.invoke(app, ["models", "check", "--model", str(tmp_path / "nowhere"), "--device", "cpu"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_real_weights_pass_by_registry_name() -> None:
    """all-MiniLM-L6-v2 (real weights, English manifest) passes; its bi-encoder has no head to check."""
    result = runner.invoke(app, ["models", "check", "--model", "all-minilm-l6-v2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "bi-encoder" in result.output and "(en)" in result.output


def test_golden_files_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "query": "q", "relevant": "r", "irrelevant": "i"}\n{"id": "b", "query": "q"}\n')
    with pytest.raises(GoldenSetError, match="line 2"):
        load_golden(bad)
    bad.write_text('{"id": "a", "query": "q", "relevant": "r", "irrelevant": "i"}\n' * 2)
    with pytest.raises(GoldenSetError, match="unique; repeated: a"):
        load_golden(bad)


def _start_worker(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rerankq", "worker", "--model", str(folder), "--device", "cpu", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_worker_refuses_a_model_that_fails(good_model: Path, tmp_path: Path) -> None:
    """Same checks at start: a reversed model is refused, and a NaN model is refused even with the
    ranking check switched off."""
    reversed_model = broken_copy(good_model, tmp_path / "reversed", BREAKAGES["reversed"][0])
    refused = _start_worker(reversed_model, "--check-ranking")  # the test session turns it off by default
    assert refused.returncode == 2 and "ranking check failed" in refused.stderr
    nan_model = broken_copy(good_model, tmp_path / "nan", BREAKAGES["nan-scores"][0])
    refused = _start_worker(nan_model, "--no-check-ranking")
    assert refused.returncode == 2 and "outputs check failed" in refused.stderr and "NaN" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_diff_reports_agreement_and_the_largest_changes(good_model: Path, tmp_path: Path) -> None:
    import json

    reversed_model = broken_copy(good_model, tmp_path / "reversed", BREAKAGES["reversed"][0])
    same = runner.invoke(
        app, ["models", "diff", "--model", str(good_model), "--candidate", str(good_model), "--device", "cpu", "--json"]
    )
    assert same.exit_code == 0, same.output
    report = json.loads(same.output)
    assert (report["pairs"], report["same_order"], report["right_a"]) == (26, 13, 13)
    assert report["spearman"] == pytest.approx(1.0)
    assert max(abs(change["score_b"] - change["score_a"]) for change in report["largest_changes"]) < 1e-6
    flipped = runner.invoke(
        app,
        [
            "models",
            "diff",
            "--model",
            str(good_model),
            "--candidate",
            str(reversed_model),
            "--device",
            "cpu",
            "--json",
            "--top",
            "3",
        ],
    )
    report = json.loads(flipped.output)
    assert report["spearman"] == pytest.approx(-1.0) and (report["right_a"], report["right_b"]) == (13, 0)
    assert report["same_order"] == 0 and len(report["largest_changes"]) == 3
    deltas = [abs(change["score_b"] - change["score_a"]) for change in report["largest_changes"]]
    assert deltas == sorted(deltas, reverse=True) and deltas[0] > 0.5
    gate = runner.invoke(
        app,
        [
            "models",
            "diff",
            "--model",
            str(good_model),
            "--candidate",
            str(reversed_model),
            "--device",
            "cpu",
            "--min-spearman",
            "0.8",
        ],
    )
    assert gate.exit_code == 1 and "Spearman rank correlation -1.0000" in gate.output


def test_a_nan_score_at_serve_time_fails_the_job_instead_of_serving_it() -> None:
    """The start-up check cannot see every input; an input that overflows still never returns NaN."""
    from rerankq.core.contract import build_job
    from rerankq.errors import JobFailed
    from rerankq.worker.tasks import refuse_non_finite

    job = build_job("q", ["a", "b"], model="m", settings=get_settings())
    refuse_non_finite(job, {"a": 0.5, "b": -2.0})
    with pytest.raises(JobFailed, match="scored 1 of 2 pairs NaN or infinity"):
        refuse_non_finite(job, {"a": 0.5, "b": math.nan})
