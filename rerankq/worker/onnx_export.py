"""Export a loaded torch model to ONNX once, into a folder keyed by its weights, and find it again.

One folder per weights fingerprint under ``RERANKQ_ONNX_DIR``::

    <onnx_dir>/<model name>-<fingerprint>/
        model.onnx          float32, exported with torch.onnx.export (dynamic batch and length)
        model.int8.onnx     8-bit weights (onnxruntime's dynamic quantization), made when first asked for:
                            int8 on a CPU with VNNI, uint8 on one without (see quantize_int8)
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
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

from rerankq.core.settings import BackendName
from rerankq.worker.backends import ScoringModel
from rerankq.worker.file_digest import file_digest

log = logging.getLogger("rerankq.worker")

# Bump when the export or quantization changes how files come out: older folders are rebuilt.
RECIPE = 3  # 3: MatMul weights only, int8 on CPUs with VNNI, uint8 elsewhere (exact sums on either)
OPSET = 17
FP32_FILE, INT8_FILE, META_FILE = "model.onnx", "model.int8.onnx", "export.json"
Int8Weights = Literal["int8", "uint8"]
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
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
        if name == INT8_FILE and (weights := meta.get("int8_weights")) != (wanted := int8_weights_for_this_cpu()):
            return f"quantized with {weights} weights; {wanted} weights sum exactly and fastest on this CPU"
        return None

    def record(self, source: str, names: list[str]) -> None:
        """Write ``export.json`` for the files now in the folder (written last: a crash mid-export
        leaves a folder that is rebuilt, never one that is trusted)."""
        meta = self._meta() or {}
        files = {**meta.get("files", {}), **{name: file_digest(self.path / name) for name in names}}
        weights = int8_weights_for_this_cpu() if INT8_FILE in names else meta.get("int8_weights")
        kept = {"int8_agreement": meta.get("int8_agreement", {})} if INT8_FILE not in names else {}
        meta = {"recipe": RECIPE, "opset": OPSET, "source": source, "torch": torch.__version__, "files": files}
        self._write(meta | {"int8_weights": weights} | kept)  # a new int8 file forgets what was measured of the old

    def remembered(self, key: str) -> dict[str, Any] | None:
        """What the int8 gate measured of this folder's int8 file on the items ``key`` names."""
        return ((self._meta() or {}).get("int8_agreement") or {}).get(key)

    def remember(self, key: str, measured: dict[str, Any]) -> None:
        """Keep the int8 gate's measure beside the files, so the next start compares it with the
        thresholds instead of scoring a few thousand pairs twice again (minutes for a large
        model on CPU). Measures of other item sets stay; the file's digest is checked at each start.
        Under the folder's lock: workers starting together each read, add and rewrite ``export.json``."""
        with self.locked():
            meta = self._meta()
            if meta is not None:
                self._write(meta | {"int8_agreement": {**meta.get("int8_agreement", {}), key: measured}})

    def _write(self, meta: dict[str, Any]) -> None:
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
    """8-bit weights of the MatMuls, per channel; activations quantized on the fly (uint8).

    The weights' type follows the CPU, so that ONNX Runtime's products sum exactly and as fast as
    the CPU allows. With VNNI (``vpdpbusd``: uint8 x int8 summed in 32 bits) int8 weights are
    exact and fastest: all-MiniLM-L6-v2 ran 1.54x float32 ONNX with int8 weights and 0.97x with
    uint8 on a Xeon with VNNI. Without it (AVX2 alone) ONNX Runtime multiplies uint8 by int8 with
    VPMADDUBSW, whose int16 pair sums saturate (all-MiniLM-L6-v2's gate: Spearman 0.9765 on a Zen 2
    against 0.9941 with exact sums); uint8 x uint8 sums exactly there, at the same speed. MatMul
    only: the embedding tables (Gather) stay float32; quantizing them saves size, not time, and
    costs accuracy. Leaving more in float32 was measured too (docs/backends.md): the attention
    MatMuls alone keep the best passage more often but give up the speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weights = int8_weights_for_this_cpu()
    started = time.perf_counter()
    with _quiet_preprocessing_advice():
        quantize_dynamic(
            fp32,
            target,
            weight_type=QuantType.QInt8 if weights == "int8" else QuantType.QUInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            use_external_data_format=fp32.stat().st_size > _EXTERNAL_DATA_BYTES,
        )
    log.info("quantized to %s weights in %.1fs (%d MB)", weights, time.perf_counter() - started, _megabytes(target))


def int8_weights_for_this_cpu() -> Int8Weights:
    """int8 where the CPU has VNNI (exact and fastest there), uint8 elsewhere (exact everywhere)."""
    return "int8" if _VNNI_FLAGS & _cpu_flags() else "uint8"


@cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo; none elsewhere, which picks uint8: exact on
    every CPU)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


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
