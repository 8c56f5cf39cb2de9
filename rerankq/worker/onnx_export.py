"""Export a loaded torch model to ONNX once, into a folder keyed by its weights, and find it again.

One folder per weights fingerprint under ``RERANKQ_ONNX_DIR``::

    <onnx_dir>/<model name>-<fingerprint>/
        model.onnx          float32, exported with torch.onnx.export (dynamic batch and length)
        model.int8.onnx     int8 weights (onnxruntime's dynamic quantization), made when first asked for
        export.json         what made the files, and each file's size and sampled hash
        .lock               held while a worker checks or writes the folder

A folder whose ``export.json`` names another recipe, or whose files are missing, truncated or
changed, is stale or broken: it is rebuilt, and the log says why. Workers starting together on one
host take the lock in turn, so the second reuses what the first wrote.

Written here, not with optimum: optimum's exporter pins transformers below 5, which rerankq's
models need; ``torch.onnx.export`` and ``onnxruntime.quantization`` are all it takes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rerankq.core.settings import BackendName
from rerankq.worker.backends import ScoringModel
from rerankq.worker.file_digest import file_digest

log = logging.getLogger("rerankq.worker")

# Bump when the export or quantization changes how files come out: older folders are rebuilt.
RECIPE = 2  # 2: int8 quantizes MatMul weights only, as uint8 (exact U8U8 kernels on every x86 CPU)
OPSET = 17
FP32_FILE, INT8_FILE, META_FILE = "model.onnx", "model.int8.onnx", "export.json"
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf files stop at 2 GiB; larger models keep weights beside


class BrokenExport(Exception):
    """An export folder that cannot be used as it is; the message says what is wrong with it."""


@dataclass(frozen=True)
class ExportFolder:
    """One model's exports: which file serves each ONNX backend, and whether it can be trusted."""

    path: Path

    @classmethod
    def for_weights(cls, onnx_dir: Path, model: str, kind: str, fingerprint: str) -> ExportFolder:
        """One folder per weights and kind: a folder served as a bi-encoder and as a cross-encoder
        exports two different graphs."""
        key = hashlib.blake2b(f"{kind}|{fingerprint}".encode(), digest_size=8).hexdigest()
        return cls(onnx_dir.expanduser() / f"{model}-{key}")

    def file_for(self, backend: BackendName) -> Path:
        return self.path / (INT8_FILE if backend == "onnx-int8" else FP32_FILE)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Held while checking or writing: one worker exports, the others wait and reuse."""
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def problem_with(self, backend: BackendName, source: str) -> str | None:
        """Why the file for ``backend`` cannot be reused as it is, or None when it can."""
        meta = self._meta()
        if meta is None:
            return "no export yet" if not (self.path / META_FILE).exists() else f"{META_FILE} is unreadable"
        if meta.get("recipe") != RECIPE:
            return f"stale: exported by recipe {meta.get('recipe')}, this release writes recipe {RECIPE}"
        if meta.get("source") != source:
            return f"exported from {meta.get('source')}, not {source}"
        name = self.file_for(backend).name
        recorded = meta.get("files", {}).get(name)
        if recorded is None:
            return f"no {name} yet"
        if not (self.path / name).is_file():
            return f"{name} is missing"
        if recorded != file_digest(self.path / name):
            return f"{name} changed since it was written (size or content)"
        return None

    def record(self, source: str, names: list[str]) -> None:
        """Write ``export.json`` for the files now in the folder (written last: a crash mid-export
        leaves a folder that is rebuilt, never one that is trusted)."""
        meta = self._meta() or {}
        files = {**meta.get("files", {}), **{name: file_digest(self.path / name) for name in names}}
        meta = {"recipe": RECIPE, "opset": OPSET, "source": source, "torch": torch.__version__, "files": files}
        temporary = self.path / f"{META_FILE}.tmp"
        temporary.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        temporary.replace(self.path / META_FILE)

    def forget(self) -> None:
        """Drop the record of every file (before a rebuild), keeping the folder and its lock."""
        (self.path / META_FILE).unlink(missing_ok=True)

    def _meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None


def export_fp32(model: ScoringModel, sample: dict[str, torch.Tensor], output: str, target: Path) -> None:
    """Trace ``model`` (features in, ``output`` out) into an ONNX file with dynamic batch and length.
    The TorchScript exporter: the dynamo one took 4x as long on a tiny BERT here."""
    names = list(sample)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # the tracer warns of every Python-level check it fixes as a constant (mask present, sizes
        # that agree); none depends on the input, and the float32 scores are checked against torch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            _Positional(model, names, output).eval(),
            tuple(sample[name] for name in names),
            str(target),
            input_names=names,
            output_names=[output],
            dynamic_axes={**{name: {0: "batch", 1: "tokens"} for name in names}, output: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    log.info("exported %s to ONNX in %.1fs (%d MB)", output, time.perf_counter() - started, _megabytes(target))


def quantize_int8(fp32: Path, target: Path) -> None:
    """8-bit weights of the MatMuls, per channel; activations quantized on the fly.

    uint8 weights, not int8: ONNX Runtime multiplies uint8 activations by int8 weights with
    VPMADDUBSW on CPUs without VNNI (AVX2, AVX-512 without VNNI), whose int16 pair sums saturate,
    so int8 scores there differ from those of a VNNI CPU (all-MiniLM-L6-v2's gate: Spearman 0.9765
    on a Zen 2 against 0.9941 with exact sums). uint8 x uint8 sums exactly on every CPU, at the same
    speed. MatMul only: the embedding tables (Gather) stay float32; quantizing them saves size, not
    time, and costs accuracy."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    with _quiet_preprocessing_advice():
        quantize_dynamic(
            fp32,
            target,
            weight_type=QuantType.QUInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            use_external_data_format=fp32.stat().st_size > _EXTERNAL_DATA_BYTES,
        )
    log.info("quantized to int8 in %.1fs (%d MB)", time.perf_counter() - started, _megabytes(target))


@contextmanager
def _quiet_preprocessing_advice() -> Iterator[None]:
    """onnxruntime's quantizer advises, on the root logger, a pre-processing step meant for
    static quantization of vision models; in a worker's log it reads like a fault."""

    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


class _Positional(torch.nn.Module):
    """The ONNX exporter passes tensors by position; sentence-transformers models take one dict."""

    def __init__(self, model: ScoringModel, names: list[str], output: str) -> None:
        super().__init__()
        self.model, self.names, self.output = model, names, output

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features: dict[str, Any] = dict(zip(self.names, tensors, strict=True))
        result: torch.Tensor = self.model({**features, "modality": "text"})[self.output]
        return result


def _megabytes(path: Path) -> int:
    return path.stat().st_size // 1_000_000
