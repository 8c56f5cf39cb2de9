"""The int8 gate: an ``onnx-int8`` worker serves only if int8 ranks the golden set as float32 does.

Dynamic int8 quantization moves scores by about 1e-2; on most rerankers the ranking survives, on
some it does not (a model whose relevant and irrelevant scores lie close together). Both backends
score the golden pairs (the shipped set in the model's languages, plus ``--golden``); the worker
refuses to start when Spearman's rank correlation or the share of items whose best passage agrees
falls below the thresholds (``RERANKQ_INT8_MIN_SPEARMAN``, ``RERANKQ_INT8_MIN_TOP1``).
"""

from __future__ import annotations

from collections.abc import Sequence

from rerankq.errors import ModelCheckFailed
from rerankq.worker.backends import Backend
from rerankq.worker.golden import GoldenItem
from rerankq.worker.model_diff import DiffReport, diff_models
from rerankq.worker.validation import Passed

CHECK = "int8 agreement"


def check_int8(
    reference: Backend, int8: Backend, items: Sequence[GoldenItem], min_spearman: float, min_top1: float
) -> Passed:
    """Compare int8 with its float32 ``reference``; ``ModelCheckFailed`` says by how much it missed."""
    report = diff_models(reference, int8, items, top=1)
    misses = _misses(report, min_spearman, min_top1)
    summary = f"{report.pairs} golden pairs in {report.items} items: {_agreement(report)}"
    if misses:
        raise ModelCheckFailed(
            CHECK,
            f"int8 ranks the golden set unlike float32 ({summary}); {'; '.join(misses)}",
            "serve float32 (--backend onnx, or torch), or accept the loss by lowering "
            f"RERANKQ_INT8_MIN_SPEARMAN (now {min_spearman:g}) and RERANKQ_INT8_MIN_TOP1 (now {min_top1:g}); "
            "`rerankq models diff --candidate-backend onnx-int8` lists the pairs that moved",
        )
    return Passed(CHECK, summary)


def _misses(report: DiffReport, min_spearman: float, min_top1: float) -> list[str]:
    misses = []
    if not report.spearman_at_least(min_spearman):
        short = min_spearman - report.spearman
        misses.append(f"Spearman {report.spearman:.4f} is {short:.4f} short of {min_spearman:g}")
    if report.top1_agreement < min_top1:
        misses.append(
            f"the best passage agrees in {report.same_top} of {report.items} items "
            f"({report.top1_agreement:.2%}, {min_top1:.0%} required)"
        )
    return misses


def _agreement(report: DiffReport) -> str:
    largest = abs(report.largest_changes[0].delta) if report.largest_changes else 0.0
    return (
        f"Spearman {report.spearman:.4f}, best passage agrees in {report.same_top}/{report.items}, "
        f"largest normalised score change {largest:.3g}"
    )
