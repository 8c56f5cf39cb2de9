"""``rerankq bench quantization``: the known ways to keep a ranking through 8-bit quantization,
each measured for speed and for agreement with float32 on the same model, side by side.

Every variant quantizes the model's float32 ONNX export (the worker's own, rerankq.worker.
onnx_export) and is timed through the same batcher as ``backends``, in alternating rounds; its
agreement is measured on the close candidates (rerankq.worker.close_candidates) and the golden
set, as the int8 gate measures it. Node names follow the BERT family's export
(``…/layer.N/attention/…``, ``…/intermediate/dense``, ``…/output/dense``), which covers
cross-encoders of the BERT and XLM-RoBERTa families and the bi-encoder; a variant that selects no
node of another architecture is skipped. Written here, not with optimum (see onnx_export).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerankq.bench.inprocess import InProcessModel
from rerankq.bench.workload import Job
from rerankq.worker.backends import Backend, BiEncoderBackend, CrossEncoderBackend, pad_features
from rerankq.worker.close_candidates import close_candidates
from rerankq.worker.golden import GoldenItem, load_golden
from rerankq.worker.model_diff import close_agreement, diff_models
from rerankq.worker.onnx_backend import EncoderBackend, OnnxModel

Record = dict[str, Any]
Select = Callable[["Graph"], dict[str, list[str]]]  # the graph's MatMuls -> quantize_dynamic's node lists
ROUNDS = 2
_LAYER = re.compile(r"/layer\.(\d+)/")
_FEED_FORWARD_OUT = re.compile(r"/layer\.\d+/output/dense/")  # the attention block's own is .../attention/output/


@dataclass(frozen=True)
class Graph:
    """The float32 export's weight MatMuls, by where they sit."""

    matmuls: list[str]

    @property
    def layers(self) -> int:
        return 1 + max((self.layer_of(name) for name in self.matmuls), default=-1)

    def layer_of(self, name: str) -> int:
        found = _LAYER.search(name)
        return int(found[1]) if found else -1

    @property
    def feed_forward(self) -> list[str]:
        return [
            name for name in self.matmuls if "/intermediate/" in name or re.search(r"/layer\.\d+/output/dense/", name)
        ]

    @property
    def down_projections(self) -> list[str]:
        return [name for name in self.feed_forward if "/intermediate/" not in name]

    @property
    def attention(self) -> list[str]:
        return [name for name in self.matmuls if "/attention/" in name and name not in self.feed_forward]

    def outside_last(self, layers: int) -> list[str]:
        """Every MatMul but those of the last ``layers`` layers and those after them (pooler, head)."""
        first_kept = self.layers - layers
        return [name for name in self.matmuls if 0 <= self.layer_of(name) < first_kept]


@dataclass(frozen=True)
class Variant:
    name: str
    weights: str  # "int8" or "uint8"
    select: Select
    static: bool = False  # activation ranges calibrated in advance on the golden texts


VARIANTS = [
    Variant("every weight MatMul, int8 weights (the default with VNNI)", "int8", lambda g: {}),
    Variant("every weight MatMul, uint8 weights (the default without VNNI)", "uint8", lambda g: {}),
    Variant("last layer kept float32", "int8", lambda g: {"nodes_to_quantize": g.outside_last(1)}),
    Variant("last two layers kept float32", "int8", lambda g: {"nodes_to_quantize": g.outside_last(2)}),
    Variant("feed-forward MatMuls only", "int8", lambda g: {"nodes_to_quantize": g.feed_forward}),
    Variant("all but the feed-forward down-projections", "int8", lambda g: {"nodes_to_exclude": g.down_projections}),
    Variant("attention MatMuls only", "int8", lambda g: {"nodes_to_quantize": g.attention}),
    Variant("static, calibrated on the golden texts", "int8", lambda g: {}, static=True),
]


def quantization_tradeoffs(float32: InProcessModel, jobs: Sequence[Job], window: int) -> Iterator[Record]:
    """One record per variant: pairs/s against float32 ONNX, agreement on close candidates and the
    golden set, file size."""
    reference = float32.backend
    if not isinstance(reference, CrossEncoderBackend | BiEncoderBackend) or not isinstance(reference.model, OnnxModel):
        raise ValueError("the quantization scenario starts from a float32 ONNX encoder (--backend onnx)")
    golden = load_golden()
    close = close_candidates(golden)
    source = reference.model.path
    graph = Graph(_weight_matmuls(source))
    with tempfile.TemporaryDirectory(prefix="rerankq-quantization-") as folder:
        built = {v.name: _build(v, graph, source, Path(folder), reference, golden) for v in VARIANTS}
        models = {"float32": float32} | {name: float32.with_backend(b) for name, b in built.items() if b is not None}
        fastest = _fastest(models, jobs, window)
        for name, model in models.items():
            if name == "float32":
                continue
            agreement = close_agreement(float32.backend, model.backend, close)
            golden_diff = diff_models(float32.backend, model.backend, golden, close=False)
            yield {
                "variant": name,
                "float32_pairs_per_s": fastest["float32"],
                "pairs_per_s": fastest[name],
                "ratio": fastest[name] / fastest["float32"],
                "close_top1": agreement.top1,
                "close_top3": agreement.top3,
                "close_spearman_per_item": agreement.spearman_per_item,
                "close_items": agreement.items,
                "golden_spearman": golden_diff.spearman,
                "megabytes": Path(folder, _file_name(name)).stat().st_size / 1e6,
            }


def _fastest(models: dict[str, InProcessModel], jobs: Sequence[Job], window: int) -> dict[str, float]:
    """Best round of each, rounds alternating so a slower minute of the machine hits every one."""
    best = dict.fromkeys(models, 0.0)
    for _ in range(ROUNDS):
        for name, model in models.items():
            best[name] = max(best[name], model.batched(jobs, window).timed.pairs_per_s)
    return best


def _build(
    variant: Variant, graph: Graph, source: Path, folder: Path, reference: EncoderBackend, golden: list[GoldenItem]
) -> Backend | None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    nodes = variant.select(graph)
    if any(not selected for selected in nodes.values()):
        return None  # this architecture has no such nodes (its export names them otherwise)
    target = folder / _file_name(variant.name)
    weight_type = QuantType.QInt8 if variant.weights == "int8" else QuantType.QUInt8
    common = {"weight_type": weight_type, "per_channel": True, "op_types_to_quantize": ["MatMul"], **nodes}
    if variant.static:
        calibration = _Calibration(reference, golden)
        static_format = {"quant_format": QuantFormat.QDQ, "activation_type": QuantType.QUInt8}
        quantize_static(source, target, calibration, **static_format, **common)
    else:
        quantize_dynamic(source, target, **common)
    model = OnnxModel(target, reference.output, reference.tokenizer)
    return type(reference)(model, "cpu", reference.max_length, "onnx-int8")


class _Calibration:
    """onnxruntime's CalibrationDataReader: batches of the golden pairs and a quarter of the close
    candidates, as the float32 export's inputs."""

    def __init__(self, backend: EncoderBackend, golden: list[GoldenItem]) -> None:
        texts = [(item.query, [*item.relevant, *item.irrelevant]) for item in golden]
        texts += [(item.query, item.passages) for item in close_candidates(golden)[::4]]
        features = [
            pair.features[-1] for query, passages in texts for pair in backend.encode(query, passages, backend.limits())
        ]
        inputs = set(backend.model.inputs)  # type: ignore[attr-defined]
        batches = (pad_features(backend.tokenizer, features[at : at + 8], "cpu") for at in range(0, len(features), 8))
        self.batches = ({name: t.numpy() for name, t in batch.items() if name in inputs} for batch in batches)

    def get_next(self) -> dict[str, Any] | None:
        return next(self.batches, None)


def _weight_matmuls(path: Path) -> list[str]:
    """MatMuls with a weight (an initializer) as an input: the ones dynamic quantization changes."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul" and weights & set(node.input)]


def _file_name(variant: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-") + ".onnx"
