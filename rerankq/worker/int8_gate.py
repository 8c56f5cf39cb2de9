"""The int8 gate: an ``onnx-int8`` worker serves only if int8 ranks as float32 does.

Dynamic int8 quantization moves scores by about 1e-2. On well-separated passages the ranking
survives; on what first-stage retrieval returns (a few passages that all match, scores close
together) a move that small reorders the top. So the gate scores two sets with both backends:
the golden pairs (the shipped set in the model's languages, plus ``--golden``), where Spearman's
rank correlation and the share of items whose best passage agrees must reach
``RERANKQ_INT8_MIN_SPEARMAN`` and ``RERANKQ_INT8_MIN_TOP1``; and the close candidates built from
them (rerankq.worker.close_candidates), where the share of jobs whose best passage agrees must
reach ``RERANKQ_INT8_MIN_CLOSE_TOP1``. The worker refuses to start below any of them. What it
measured is kept in the export's ``export.json``: a restart compares it with the thresholds again
without scoring the pairs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rerankq.errors import ModelCheckFailed
from rerankq.worker.backends import Backend
from rerankq.worker.golden import GoldenItem
from rerankq.worker.model_diff import CloseAgreement, DiffReport, diff_models
from rerankq.worker.onnx_export import ExportFolder
from rerankq.worker.validation import Passed

CHECK = "int8 agreement"
log = logging.getLogger("rerankq.worker")
MEASURE = 1  # bump when what the gate measures changes (the close candidates, say): kept measures lapse


@dataclass(frozen=True)
class Int8Thresholds:
    min_spearman: float  # golden pairs
    min_top1: float  # golden items
    min_close_top1: float  # close-candidate jobs


def check_int8(
    reference: Backend, int8: Backend, items: Sequence[GoldenItem], bounds: Int8Thresholds, folder: ExportFolder
) -> Passed:
    """Compare int8 with its float32 ``reference``; ``ModelCheckFailed`` says by how much it missed.
    The measure is kept in the export ``folder`` and reused while its int8 file stays the same."""
    report = measure_int8(reference, int8, items, folder)
    assert report.close is not None  # diff_models measures close candidates unless told not to
    misses = _misses(report, bounds) + _close_misses(report.close, bounds)
    summary = f"{report.pairs} golden pairs in {report.items} items: {_agreement(report)}"
    summary += f"; close candidates: {report.close.summary()}"
    if misses:
        raise ModelCheckFailed(
            CHECK,
            f"int8 ranks unlike float32 ({summary}); {'; '.join(misses)}",
            "serve float32 (--backend onnx, or torch), or accept the loss by lowering "
            f"RERANKQ_INT8_MIN_SPEARMAN (now {bounds.min_spearman:g}), RERANKQ_INT8_MIN_TOP1 (now "
            f"{bounds.min_top1:g}) or RERANKQ_INT8_MIN_CLOSE_TOP1 (now {bounds.min_close_top1:g}); "
            "`rerankq models diff --candidate-backend onnx-int8` lists the pairs that moved",
        )
    return Passed(CHECK, summary)


def measure_int8(reference: Backend, int8: Backend, items: Sequence[GoldenItem], folder: ExportFolder) -> DiffReport:
    """The agreement of int8 with float32 on ``items`` and their close candidates: measured once
    per int8 file and item set, then read from ``export.json``."""
    measured = [MEASURE, [item.model_dump() for item in items]]
    key = hashlib.blake2b(json.dumps(measured).encode(), digest_size=8).hexdigest()
    if (known := folder.remembered(key)) is not None:
        log.info(
            "int8 agreement on these %d golden items as measured at an earlier start (%s)", len(items), folder.path
        )
        return DiffReport.from_dict(known)
    report = diff_models(reference, int8, items, top=1)
    folder.remember(key, asdict(report))
    return report


def _misses(report: DiffReport, bounds: Int8Thresholds) -> list[str]:
    misses = []
    if not report.spearman_at_least(bounds.min_spearman):
        short = bounds.min_spearman - report.spearman
        misses.append(f"Spearman {report.spearman:.4f} is {short:.4f} short of {bounds.min_spearman:g}")
    if report.top1_agreement < bounds.min_top1:
        misses.append(
            f"the best passage agrees in {report.same_top} of {report.items} golden items "
            f"({report.top1_agreement:.2%}, {bounds.min_top1:.0%} required)"
        )
    return misses


def _close_misses(close: CloseAgreement, bounds: Int8Thresholds) -> list[str]:
    if close.top1 >= bounds.min_close_top1:
        return []
    return [
        f"on close candidates the best passage agrees in {close.same_top1} of {close.items} jobs "
        f"({close.top1:.1%}, {bounds.min_close_top1:.0%} required)"
    ]


def _agreement(report: DiffReport) -> str:
    largest = abs(report.largest_changes[0].delta) if report.largest_changes else 0.0
    return (
        f"Spearman {report.spearman:.4f}, best passage agrees in {report.same_top}/{report.items}, "
        f"largest normalised score change {largest:.3g}"
    )
