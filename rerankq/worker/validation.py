"""The checks a model must pass before it serves traffic, in order, stopping at the first failure:

    config → tokenizer → weights → architecture → (template) → outputs → ranking

The first four read the model folder; the last two score the golden set (``rerankq.worker.golden``)
through the loaded backend, on the device and dtype that will serve. ``rerankq models check``
prints each; a worker runs the same ones at start and refuses a model that fails. Each failure
is a ``ModelCheckFailed`` saying what is wrong and how to fix it.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerankq.core.registry import LLM_KINDS, ModelKind, ModelManifest, PromptTemplate
from rerankq.errors import ModelCheckFailed
from rerankq.worker.backends import Backend
from rerankq.worker.golden import GoldenItem, GoldenScores, score_golden

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "vocab.json")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_SHOWN_KEYS = 4
_HEAD_PREFIXES = ("classifier.", "score.", "pre_classifier.")


@dataclass(frozen=True)
class Passed:
    check: str
    detail: str


Report = Callable[[Passed], None]


def check_files(folder: Path, manifest: ModelManifest) -> Iterator[Passed]:
    """The checks that need only the folder: config, tokenizer, weights, architecture, and an LLM
    reranker's prompt template against its tokenizer."""
    config = _config(folder)
    yield Passed(
        "config", f"{config['model_type']} config, {', '.join(config.get('architectures') or ['no architecture'])}"
    )
    yield Passed("tokenizer", _tokenizer(folder))
    yield Passed("weights", _weights(folder, manifest.kind, config))
    yield Passed("architecture", _architecture(config, manifest.kind))
    if manifest.template is not None:
        yield Passed("template", _template(folder, manifest.template))


def check_scores(
    backend: Backend, items: Sequence[GoldenItem], manifest: ModelManifest, ranking: bool
) -> Iterator[Passed]:
    """The checks that need the loaded model: outputs (always), then ranking (unless switched off)."""
    scored = score_golden(backend, items)
    yield Passed("outputs", _outputs(scored, manifest.dtype_for(backend.device)))
    if ranking:
        yield Passed("ranking", _ranking(scored, manifest))


# --- config -----------------------------------------------------------------------------------


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelCheckFailed(
            "config",
            f"{folder} has no config.json",
            "save the model with model.save_pretrained(folder): it writes config.json next to the weights",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelCheckFailed("config", f"{path} is not valid JSON ({e})", "re-save it with save_pretrained()") from e
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelCheckFailed(
            "config",
            f"{path} has no model_type, so it is not a transformers config",
            "copy config.json from the model you fine-tuned, or re-save it with save_pretrained()",
        )
    from transformers import AutoConfig

    try:
        parsed = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelCheckFailed(
            "config",
            f"transformers cannot read {path}: {_first_line(e)}",
            f"model_type {config['model_type']!r} must be one this transformers version knows; upgrade transformers "
            "or fix the value",
        ) from e
    return config | {"num_labels": parsed.num_labels}  # as transformers reads it, defaults included (2!)


# --- tokenizer --------------------------------------------------------------------------------


def _tokenizer(folder: Path) -> str:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelCheckFailed(
            "tokenizer",
            f"{folder} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)})",
            "save the tokenizer into the same folder: tokenizer.save_pretrained(folder)",
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoded = tokenizer("query", "document")
    except Exception as e:  # tokenizers fail in many ways (OSError, ValueError, parse errors); all mean the same
        raise ModelCheckFailed(
            "tokenizer",
            f"the tokenizer in {folder} does not load: {_first_line(e)}",
            "save the tokenizer of the base model you fine-tuned with tokenizer.save_pretrained(folder)",
        ) from e
    return f"{type(tokenizer).__name__}, a pair encodes to {len(encoded['input_ids'])} tokens"


# --- weights ----------------------------------------------------------------------------------


def _weights(folder: Path, kind: ModelKind, config: dict[str, Any]) -> str:
    files = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not files:
        raise ModelCheckFailed(
            "weights",
            f"{folder} has no weights (none of {', '.join(WEIGHT_FILES)})",
            "save the model with model.save_pretrained(folder); copy every shard when it is split",
        )
    _check_shards(folder, files[0])
    info = _loading_info(folder, kind)
    architecture = ", ".join(config.get("architectures") or ["an unnamed architecture"])
    if missing := sorted(info["missing_keys"]):
        head_only = all(key.startswith(_HEAD_PREFIXES) for key in missing)
        raise ModelCheckFailed(
            "weights",
            f"the checkpoint lacks {len(missing)} weights the model needs ({_keys(missing)}); transformers "
            "would fill them with random numbers",
            (
                f"the weights were saved from {architecture}, which has no ranking head: load the fine-tuned "
                "reranker with AutoModelForSequenceClassification (num_labels=1) and save_pretrained() that"
            )
            if head_only
            else "config.json and the weights belong to different models: save both together with save_pretrained()",
        )
    if unexpected := sorted(info["unexpected_keys"]):
        raise ModelCheckFailed(
            "weights",
            f"the checkpoint holds {len(unexpected)} weights the architecture has no place for ({_keys(unexpected)})",
            f"config.json names {architecture}; the weights come from another architecture or task head. "
            "Save the reranker itself (AutoModelForSequenceClassification, num_labels=1) with save_pretrained()",
        )
    if mismatched := sorted(info["mismatched_keys"]):
        shown = "; ".join(f"{key}: file {tuple(saved)} vs config {tuple(wanted)}" for key, saved, wanted in mismatched)
        raise ModelCheckFailed(
            "weights",
            f"{len(mismatched)} weights have another shape than config.json implies ({_clip(shown)})",
            "config.json was edited or comes from another model size: save config and weights together",
        )
    return f"{', '.join(files)}: every weight fits the architecture"


def _check_shards(folder: Path, weights_file: str) -> None:
    if not weights_file.endswith(".index.json"):
        return
    weight_map = json.loads((folder / weights_file).read_text(encoding="utf-8")).get("weight_map", {})
    absent = sorted({shard for shard in weight_map.values() if not (folder / shard).is_file()})
    if absent:
        raise ModelCheckFailed(
            "weights",
            f"{weights_file} lists shards that are missing: {_keys(absent)}",
            "copy every shard file listed in the index into the folder",
        )


def _loading_info(folder: Path, kind: ModelKind) -> dict[str, Any]:
    """transformers' own account of which checkpoint weights fit the model class that will serve.
    This loads the weights once more (in their stored dtype, so safetensors can map rather than
    copy them): a sentence-transformers load silently fills a missing head with random numbers
    and reports nothing."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    classes = {"cross-encoder": AutoModelForSequenceClassification, "bi-encoder": AutoModel}
    model_class = classes.get(kind, AutoModelForCausalLM)
    try:
        model, info = model_class.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelCheckFailed(
            "weights",
            f"the weights do not load: {_first_line(e)}",
            "re-save the model with save_pretrained(); a truncated copy or a foreign file format cannot load",
        ) from e
    del model
    gc.collect()
    return dict(info)


# --- architecture -----------------------------------------------------------------------------


def _architecture(config: dict[str, Any], kind: ModelKind) -> str:
    if kind == "bi-encoder":
        return "bi-encoder: scored by cosine similarity of query and document embeddings (no ranking head)"
    architectures = config.get("architectures") or []
    if kind in LLM_KINDS:
        return _llm_architecture(architectures, kind)
    if architectures and not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ModelCheckFailed(
            "architecture",
            f"config.json names {', '.join(architectures)}, not a sequence classifier, so it has no ranking head",
            "export the reranker with AutoModelForSequenceClassification (num_labels=1); an embedding model can "
            'serve as kind = "bi-encoder" in a manifest instead',
        )
    labels = config["num_labels"]
    if labels != 1:
        raise ModelCheckFailed(
            "architecture",
            f"the classifier has num_labels = {labels}; ranking needs exactly one relevance score per pair",
            "fine-tune with num_labels=1 (one logit, trained with a binary or ranking loss); a multi-class "
            "classifier cannot rank",
        )
    return f"{', '.join(architectures) or 'a sequence classifier'} with one output"


def _llm_architecture(architectures: list[str], kind: ModelKind) -> str:
    if architectures and not any(name.endswith("ForCausalLM") for name in architectures):
        raise ModelCheckFailed(
            "architecture",
            f"config.json names {', '.join(architectures)}, not a causal language model, so it cannot answer yes or no",
            f"a {kind} is the model's *ForCausalLM checkpoint; a sequence classifier serves as a cross-encoder "
            "(leave --kind out)",
        )
    return f"{', '.join(architectures) or 'a causal LM'}, scored by its answer token"


# --- template ---------------------------------------------------------------------------------


def _template(folder: Path, template: PromptTemplate) -> str:
    from transformers import AutoTokenizer

    from rerankq.worker.llm_backend import TemplateTokenError, answer_token_ids, check_special_tokens

    tokenizer = AutoTokenizer.from_pretrained(folder)
    try:
        check_special_tokens(tokenizer, template)
        answer_token_ids(tokenizer, template)
    except TemplateTokenError as e:
        raise ModelCheckFailed(
            "template",
            str(e),
            "save the model's own tokenizer into the folder (tokenizer.save_pretrained), or give the manifest "
            "a [template] written for this tokenizer",
        ) from e
    answers = " / ".join(answer for answer in (template.yes, template.no) if answer)
    return f"{template.version}: its {len(template.special_tokens)} markers and the answers {answers} are single tokens"


# --- outputs and ranking ----------------------------------------------------------------------


def _outputs(scored: Sequence[GoldenScores], dtype: str) -> str:
    scores = [score for item in scored for score in item.all_scores()]
    bad = [item.item.id for item in scored if not all(math.isfinite(s) for s in item.all_scores())]
    if bad:
        count = sum(not math.isfinite(s) for s in scores)
        raise ModelCheckFailed(
            "outputs",
            f"{count} of {len(scores)} golden pairs scored NaN or infinity (first in item {bad[0]!r}); "
            "such a model would return NaN scores",
            f"the weights hold NaN/inf values, or activations overflow in {dtype}: check the training run did not "
            'diverge; on a GPU try dtype = {cuda = "bfloat16"} (or "float32") in the manifest',
        )
    if max(abs(s) for s in scores) < 1e-6:
        raise ModelCheckFailed(
            "outputs",
            f"all {len(scores)} golden pairs scored 0",
            "the ranking head is zero (untrained, or zeroed on export): export the trained head",
        )
    spread = max(scores) - min(scores)
    if spread <= 1e-6 * max(1.0, abs(scores[0])):
        raise ModelCheckFailed(
            "outputs",
            f"all {len(scores)} golden pairs scored the same ({scores[0]:.6g}): the score ignores its input",
            "the ranking head's weights are zero or the model collapsed in training: export a trained checkpoint",
        )
    return f"{len(scores)} golden pairs scored, all finite, from {min(scores):.4g} to {max(scores):.4g}"


def _ranking(scored: Sequence[GoldenScores], manifest: ModelManifest) -> str:
    applicable = [item for item in scored if manifest.checks_language(item.item.language)]
    if not applicable:
        languages = ", ".join(manifest.languages)
        return f"skipped: the golden set has no items in {languages}; pass --golden with items in those languages"
    wrong = [item for item in applicable if not item.ranked_right]
    covered = ", ".join(sorted({item.item.language for item in applicable}))
    if not wrong:
        return f"{len(applicable)} golden items ranked the right way round ({covered})"
    shown = "; ".join(_describe_wrong(item) for item in _one_per_language_first(wrong)[:3])
    raise ModelCheckFailed(
        "ranking",
        f"{len(wrong)} of {len(applicable)} golden items ranked the wrong way round: {shown}",
        "every item is reversed: the model scores irrelevance (labels flipped in training?); retrain with label 1 = "
        "relevant"
        if len(wrong) == len(applicable)
        else f"if the model is not meant for {', '.join(sorted({item.item.language for item in wrong}))}, list its "
        'languages in its manifest (languages = ["en"]) or pass --languages; else compare it with the serving '
        "version (rerankq models diff) before it ships",
    )


def _one_per_language_first(wrong: list[GoldenScores]) -> list[GoldenScores]:
    firsts = list({item.item.language: item for item in reversed(wrong)}.values())[::-1]
    return firsts + [item for item in wrong if item not in firsts]


def _describe_wrong(item: GoldenScores) -> str:
    worst = max(item.irrelevant)
    passage = item.item.irrelevant[item.irrelevant.index(worst)]
    return (
        f"{item.item.id} ({item.item.language}): for {item.item.query!r} the irrelevant {_clip(passage, 40)!r} "
        f"scored {worst:.4g}, above the relevant passage's {min(item.relevant):.4g}"
    )


def _keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
