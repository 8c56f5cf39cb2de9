"""Resolve ``--model NAME_OR_PATH`` to a manifest, check it (``rerankq.worker.validation``), load it on a device.

Every failure is a ``ModelLoadError`` whose message names the missing file or the mismatch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers.utils import logging as transformers_logging

from rerankq.core.contract import check_model_name
from rerankq.core.contract import model_identity as identity_of
from rerankq.core.registry import LLM_KINDS, ModelKind, ModelManifest, find_manifest, source_path
from rerankq.core.settings import BackendName, Settings, get_settings
from rerankq.errors import InvalidRequest, ModelLoadError
from rerankq.worker.backends import Backend, BiEncoderBackend, CrossEncoderBackend
from rerankq.worker.file_digest import sample_into
from rerankq.worker.golden import GoldenItem, load_golden
from rerankq.worker.hub import require_weights
from rerankq.worker.int8_gate import Int8Thresholds, check_int8
from rerankq.worker.onnx_backend import onnx_backend, refuse_unservable
from rerankq.worker.onnx_export import ExportFolder
from rerankq.worker.validation import Report, check_files, check_scores

log = logging.getLogger("rerankq.worker")
transformers_logging.disable_progress_bar()  # one bar per load on stderr, in every worker log
DEFAULT_LLM_LENGTH = 1024  # tokens per pair, template included, for an LLM reranker's folder
_FINGERPRINTED = {"config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "pytorch_model.bin"}


def resolve_model(spec: str, name: str | None, settings: Settings, kind: ModelKind | None = None) -> ModelManifest:
    """A registry name or HF id with a manifest, a local folder, or a bare Hugging Face id.
    ``kind`` (``--kind``) says what a folder or bare id holds; a manifest says it itself."""
    manifest = find_manifest(settings.models_dir, spec)
    if manifest is not None:
        if kind is not None and kind != manifest.kind:
            raise ModelLoadError(f"{spec} is a {manifest.kind} by its manifest, not a {kind}: leave --kind out")
        return manifest.model_copy(update={"name": name or manifest.name})
    kind = kind or "cross-encoder"
    path = Path(spec).expanduser()
    if path.is_dir():
        limit = folder_token_limit(path)
        name = _checked_name(name or path.resolve().name)
        length = min(DEFAULT_LLM_LENGTH if kind in LLM_KINDS else 512, limit)
        return ModelManifest(
            name=name, source=str(path.resolve()), kind=kind, max_length=length, model_max_length=limit
        )
    if _looks_like_path(spec):
        raise ModelLoadError(f"model folder {spec} does not exist")
    return ModelManifest(name=_checked_name(name or spec.rsplit("/", 1)[-1]), source=spec, kind=kind)


def folder_token_limit(folder: Path) -> int:
    """The most tokens a folder's model reads: its tokenizer's ``model_max_length`` (transformers
    writes a huge placeholder when unknown), else its position table, else 512."""
    tokenizer_limit = _json_field(folder / "tokenizer_config.json", "model_max_length")
    if isinstance(tokenizer_limit, int) and 8 <= tokenizer_limit < 1_000_000:
        return tokenizer_limit
    positions = _json_field(folder / "config.json", "max_position_embeddings")
    if isinstance(positions, int) and positions >= 8:
        # RoBERTa-family position tables start at padding_idx + 1 (2 slots unused)
        roberta = _json_field(folder / "config.json", "model_type") in ("roberta", "xlm-roberta", "camembert")
        return positions - 2 if roberta else positions
    return 512


def _json_field(path: Path, field: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(field)
    except (OSError, ValueError, AttributeError):
        return None


def pick_device(device: str, min_free_gpu_mb: int = 0, fallback_to_cpu: bool = False) -> str:
    """``auto`` means CUDA when torch sees a GPU. With ``min_free_gpu_mb``, a GPU with less free
    memory refuses to start, or starts the worker on CPU when ``fallback_to_cpu`` says so."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but no CUDA GPU is visible to torch")
    if device.startswith("cuda") and min_free_gpu_mb:
        free_mb = torch.cuda.mem_get_info()[0] // (1 << 20)
        if free_mb < min_free_gpu_mb:
            if not fallback_to_cpu:
                raise ModelLoadError(
                    f"only {free_mb} MiB free on the GPU, {min_free_gpu_mb} MiB required "
                    "(--min-free-gpu-mb); pass --fallback-to-cpu to start on CPU instead"
                )
            log.warning("only %d MiB free on the GPU (< %d MiB): starting as a CPU worker", free_mb, min_free_gpu_mb)
            return "cpu"
    return device


def load_checked(
    manifest: ModelManifest,
    device: str,
    *,
    max_length: int | None = None,
    golden: Sequence[GoldenItem] | None = None,
    check_ranking: bool = True,
    served_by: BackendName = "torch",
    settings: Settings | None = None,
    report: Report = lambda passed: None,
) -> Backend:
    """Run every check of ``rerankq.worker.validation`` around the load; ``report`` hears each that passes.
    Raises ``ModelCheckFailed`` at the first that fails. A hub model not in the local cache has no
    folder to check before the load, which then fails with its own message. With an ONNX backend
    the checks run on torch, then the export is checked against it (int8: the gate)."""
    refuse_unservable(manifest, device, served_by)
    folder = model_folder(manifest)
    if folder is not None:
        for passed in check_files(folder, manifest):
            report(passed)
    backend = load_backend(manifest, device, max_length)
    for passed in check_scores(backend, golden or load_golden(), manifest, check_ranking):
        report(passed)
    if served_by == "torch":
        return backend
    settings = settings or get_settings()
    exported = as_onnx(backend, manifest, served_by, settings)
    if served_by == "onnx-int8":
        items = gate_items(manifest, golden)
        report(check_int8(backend, exported, items, int8_thresholds(settings), export_folder(manifest, settings)))
    return exported


def load_backend(
    manifest: ModelManifest,
    device: str,
    max_length: int | None = None,
    served_by: BackendName = "torch",
    settings: Settings | None = None,
) -> Backend:
    """Load the weights once, in the manifest's dtype for the device (fp16 on CUDA, fp32 on CPU);
    with an ONNX backend, export them (or reuse the export) and serve that, unchecked by the gate."""
    refuse_unservable(manifest, device, served_by)
    require_weights(manifest)  # in seconds, not after a minute of hub retries
    source = source_path(manifest.source)
    length = min(max_length or manifest.max_length, manifest.model_max_length)
    try:
        backend = _load(manifest, source, device, length, settings or get_settings())
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(_explain_load_failure(manifest, e)) from e
    dtype = getattr(torch, manifest.dtype_for(device))
    if dtype != torch.float32:
        backend.model.to(dtype)  # type: ignore[attr-defined]
    if served_by == "torch":
        return backend
    return as_onnx(backend, manifest, served_by, settings or get_settings())


def as_onnx(reference: Backend, manifest: ModelManifest, served_by: BackendName, settings: Settings) -> Backend:
    """``reference`` (torch, float32, CPU) served by ONNX Runtime from its export in RERANKQ_ONNX_DIR."""
    return onnx_backend(reference, manifest, served_by, export_folder(manifest, settings), load_golden())


def export_folder(manifest: ModelManifest, settings: Settings) -> ExportFolder:
    return ExportFolder.for_weights(settings.onnx_dir, manifest.name, manifest.kind, weights_fingerprint(manifest))


def int8_thresholds(settings: Settings) -> Int8Thresholds:
    return Int8Thresholds(settings.int8_min_spearman, settings.int8_min_top1, settings.int8_min_close_top1)


def gate_items(manifest: ModelManifest, golden: Sequence[GoldenItem] | None) -> list[GoldenItem]:
    """What the int8 gate scores: the shipped golden items in the model's languages (all of them
    when none is in its languages: agreement with float32 still counts), and the user's."""
    every = load_golden()
    shipped = [item for item in every if manifest.checks_language(item.language)] or every
    return shipped + [item for item in golden or [] if item not in shipped]


def model_identity(manifest: ModelManifest, backend: Backend, query_share: float) -> str:
    """What cached scores are keyed on: which weights, and the worker settings that change scores.

    New weights, a new revision, another max_length or query share give another identity, so a
    model change can never serve stale scores."""
    fingerprint = weights_fingerprint(manifest)
    revision = served_revision(manifest, fingerprint)
    # an LLM's prompt changes its scores as its weights do: the template's version and hash count
    kind = manifest.kind if manifest.template is None else f"{manifest.kind}+{manifest.template.fingerprint()}"
    return identity_of(manifest.name, revision, kind, fingerprint, backend.max_length, query_share, backend.served_by)


def served_revision(manifest: ModelManifest, fingerprint: str) -> str:
    """The revision results name: the manifest's pinned one, the hub snapshot's commit, or (local
    weights) ``sha-`` and the start of the weights fingerprint."""
    if manifest.revision:
        return manifest.revision
    folder = model_folder(manifest)
    if folder is not None and folder.parent.name == "snapshots":
        return folder.name
    return f"sha-{fingerprint[:12]}" if folder is not None else "unresolved"


def weights_fingerprint(manifest: ModelManifest) -> str:
    """A hash over the model folder's config, tokenizer and weight files: names, sizes, and the
    first and last MiB of each (hashing whole multi-GB files would slow every start-up)."""
    folder = model_folder(manifest)
    if folder is None:
        return f"{manifest.source}@{manifest.revision or 'unresolved'}"
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(p for p in folder.iterdir() if p.name in _FINGERPRINTED or p.suffix == ".safetensors"):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
        sample_into(digest, path)
    return digest.hexdigest()


def model_folder(manifest: ModelManifest) -> Path | None:
    """The folder the weights were loaded from: a local folder, or the hub cache's snapshot."""
    source = Path(source_path(manifest.source))
    if source.is_dir():
        return source
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(manifest.source, revision=manifest.revision, local_files_only=True))
    except Exception:  # not in the local cache in a form we can read: fall back to the id
        return None


def _load(manifest: ModelManifest, source: str, device: str, max_length: int, settings: Settings) -> Backend:
    if manifest.template is not None:
        return _load_llm(manifest, source, device, max_length, settings)
    if manifest.kind == "bi-encoder":
        bi_encoder = SentenceTransformer(source, device=device, revision=manifest.revision)
        bi_encoder.max_seq_length = max_length
        return BiEncoderBackend(bi_encoder, device, max_length)
    cross_encoder = CrossEncoder(source, device=device, revision=manifest.revision, max_length=max_length)
    if cross_encoder.num_labels != 1:
        raise ModelLoadError(
            f"{manifest.source}: the classifier has num_labels={cross_encoder.num_labels}; "
            "a reranker needs exactly one output (num_labels=1)"
        )
    return CrossEncoderBackend(cross_encoder, device, max_length)


def _load_llm(manifest: ModelManifest, source: str, device: str, max_length: int, settings: Settings) -> Backend:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rerankq.worker.llm_backend import TemplateTokenError, YesNoRerankerBackend
    from rerankq.worker.prompt_prefix import PrefixCache

    assert manifest.template is not None
    tokenizer = AutoTokenizer.from_pretrained(source, revision=manifest.revision)
    dtype = getattr(torch, manifest.dtype_for(device))  # loaded as it will serve: an 8B model in fp32 is 32 GB
    model = AutoModelForCausalLM.from_pretrained(source, revision=manifest.revision, dtype=dtype).to(device)
    try:
        prefixes = PrefixCache(settings.llm_prefix_cache_tokens) if settings.llm_prefix_reuse else None
        return YesNoRerankerBackend(model, tokenizer, manifest.template, manifest.kind, device, max_length, prefixes)
    except TemplateTokenError as e:
        raise ModelLoadError(f"cannot serve {manifest.source} as a {manifest.kind}: {e}") from e


def _explain_load_failure(manifest: ModelManifest, error: Exception) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not Path(source_path(manifest.source)).exists():
        return (
            f"cannot load {manifest.source!r}: the weights are neither in the local Hugging Face cache "
            f"nor reachable on the hub ({first_line}). Download them where there is network, or put "
            f"them in a folder and serve that (--model path/to/folder)"
        )
    if "ignore_mismatched_sizes" in first_line:
        first_line = "the weights do not match the architecture in config.json (tensor size mismatch)"
    return f"cannot load {manifest.source}: {first_line}"


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1


def _checked_name(name: str) -> str:
    try:
        check_model_name(name)
    except InvalidRequest as e:
        raise ModelLoadError(f"{e}; pass --name to choose one") from e
    return name
