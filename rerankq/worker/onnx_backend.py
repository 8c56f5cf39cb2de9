"""Serve a cross-encoder or the bi-encoder through ONNX Runtime on CPU (``--backend onnx|onnx-int8``).

The torch model loads first and its checks run on it; it is exported once per weights
(rerankq.worker.onnx_export) and an ONNX Runtime session takes its place behind the same backend
class, so tokenization, batching, token budgets, long documents and out-of-memory rules do not
change. Before serving, the float32 export must score the golden pairs as torch does; int8 must
pass the agreement gate (rerankq.worker.int8_gate), which the caller runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import torch

from rerankq.core.registry import ModelManifest
from rerankq.core.settings import BackendName
from rerankq.errors import ModelLoadError
from rerankq.worker.backends import Backend, BiEncoderBackend, CrossEncoderBackend, pad_features
from rerankq.worker.golden import GoldenItem, score_golden
from rerankq.worker.onnx_export import FP32_FILE, INT8_FILE, BrokenExport, ExportFolder, export_fp32, quantize_int8

log = logging.getLogger("rerankq.worker")
EncoderBackend = CrossEncoderBackend | BiEncoderBackend
# Largest raw-score difference a float32 export may show against torch on the golden pairs; a
# sound export stays near 1e-6, so more means the export is broken, not imprecise.
EXPORT_TOLERANCE = 1e-3


class OnnxModel:
    """An ONNX Runtime session behind the call the encoder backends make (a ``ScoringModel``)."""

    def __init__(self, path: Path, output: str, tokenizer: Any) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # RERANKQ_TORCH_THREADS, as torch would
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types, not exported by name
            raise BrokenExport(f"onnxruntime cannot load {path.name}: {_first_line(e)}") from e
        self.inputs = [node.name for node in self.session.get_inputs()]
        outputs = [node.name for node in self.session.get_outputs()]
        if output not in outputs:
            raise BrokenExport(f"{path.name} outputs {', '.join(outputs)}, not {output}")
        self.output = output
        self.tokenizer = tokenizer
        self.path = path  # the file served (the quantization benchmark starts from the float32 one)

    def eval(self) -> Self:
        return self

    def __call__(self, features: dict[str, Any]) -> dict[str, torch.Tensor]:
        (values,) = self.session.run([self.output], {name: features[name].numpy() for name in self.inputs})
        return {self.output: torch.from_numpy(values)}


def refuse_unservable(manifest: ModelManifest, device: str, served_by: BackendName) -> None:
    """Before any weights load: an ONNX backend serves encoders, on CPU, with onnxruntime installed."""
    if served_by == "torch":
        return
    if manifest.kind not in ("cross-encoder", "bi-encoder"):
        raise ModelLoadError(
            f"--backend {served_by} serves cross-encoders and the bi-encoder; {manifest.name} is a "
            f"{manifest.kind}, which runs on torch (--backend torch)"
        )
    if device != "cpu":
        raise ModelLoadError(f"--backend {served_by} runs on CPU (onnxruntime's CPU build); start it with --device cpu")
    try:
        import onnxruntime.quantization  # noqa: F401
    except ModuleNotFoundError as e:
        missing = (e.name or "onnxruntime").partition(".")[0]  # the distribution, not its submodule
        raise ModelLoadError(f'--backend {served_by} needs {missing}: pip install "rerankq[onnx]"') from e


def onnx_backend(
    reference: Backend,
    manifest: ModelManifest,
    served_by: BackendName,
    folder: ExportFolder,
    items: Sequence[GoldenItem],
) -> Backend:
    """``reference``'s model served by ONNX Runtime from ``folder``, exported there if needed. A
    broken or stale export is rebuilt once; one that still fails is explained."""
    if not isinstance(reference, CrossEncoderBackend | BiEncoderBackend):
        raise ModelLoadError(f"--backend {served_by} cannot serve a {reference.kind}")
    with folder.locked():
        try:
            return _open_checked(reference, manifest.source, served_by, folder, items)
        except BrokenExport as e:
            log.warning("ONNX export in %s is broken (%s): exporting it again", folder.path, e)
        folder.forget()
        try:
            return _open_checked(reference, manifest.source, served_by, folder, items)
        except BrokenExport as e:
            raise ModelLoadError(
                f"the {served_by} export of {manifest.source} in {folder.path} does not serve, even freshly "
                f"exported: {e}. Serve it with --backend torch, and report the model's config.json"
            ) from e


def _open_checked(
    reference: EncoderBackend, source: str, served_by: BackendName, folder: ExportFolder, items: Sequence[GoldenItem]
) -> Backend:
    _make_files(reference, source, served_by, folder)
    model = OnnxModel(folder.file_for(served_by), reference.output, reference.tokenizer)
    backend = type(reference)(model, reference.device, reference.max_length, served_by)
    if served_by == "onnx":
        _check_export(reference, backend, items)
    return backend


def _make_files(reference: EncoderBackend, source: str, served_by: BackendName, folder: ExportFolder) -> None:
    """Export (and quantize) what is missing or cannot be trusted, saying why; reuse the rest."""
    if problem := folder.problem_with("onnx", source):
        log.info("exporting %s to ONNX in %s (%s)", source, folder.path, problem)
        folder.forget()  # an int8 file made from an older float32 export goes with it
        export_fp32(reference.model, _sample_features(reference), reference.output, folder.path / FP32_FILE)
        folder.record(source, [FP32_FILE])
    else:
        log.info("reusing the ONNX export in %s", folder.path)
    if served_by == "onnx-int8" and (problem := folder.problem_with("onnx-int8", source)):
        log.info("quantizing %s to int8 (%s)", source, problem)
        quantize_int8(folder.path / FP32_FILE, folder.path / INT8_FILE)
        folder.record(source, [INT8_FILE])


def _sample_features(backend: EncoderBackend) -> dict[str, torch.Tensor]:
    """Two sequences of different lengths, so the traced graph pads and masks as batches do."""
    pairs = backend.encode("a query", ["a short document", "a longer document with a few more words"], backend.limits())
    return pad_features(backend.tokenizer, [pair.features[-1] for pair in pairs], "cpu")


def _check_export(reference: Backend, exported: Backend, items: Sequence[GoldenItem]) -> None:
    expected = [s for scored in score_golden(reference, items) for s in scored.all_scores()]
    actual = [s for scored in score_golden(exported, items) for s in scored.all_scores()]
    largest = max(abs(a - b) for a, b in zip(expected, actual, strict=True))
    if not largest <= EXPORT_TOLERANCE:  # NaN fails too
        raise BrokenExport(f"its golden-set scores differ from torch's by {largest:.3g} (> {EXPORT_TOLERANCE:g})")
    log.info("ONNX float32 scores match torch on %d golden pairs (largest difference %.2g)", len(expected), largest)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
