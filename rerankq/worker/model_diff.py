"""``rerankq models diff A B``: how far two model versions agree on a golden set, for deciding a rollout.

Both score every golden pair; the report gives rank correlation over all pairs (Spearman and
Kendall), how many items each ranks the right way round, how many items the two order the same
way or agree on the best passage of, and the pairs whose normalised score moved most. Two
versions may be two models, or one model on two backends (torch and its int8 export).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import kendalltau, spearmanr

from rerankq.worker.backends import Backend
from rerankq.worker.close_candidates import CloseItem, close_candidates
from rerankq.worker.golden import GoldenItem, GoldenScores, score_golden, score_passages


@dataclass(frozen=True)
class PairChange:
    item_id: str
    language: str
    passage: str
    relevant: bool
    score_a: float  # normalised into [0, 1]
    score_b: float

    @property
    def delta(self) -> float:
        return self.score_b - self.score_a


@dataclass(frozen=True)
class CloseAgreement:
    """How far two versions agree on close candidates (rerankq.worker.close_candidates): what a
    user sees of a change is whether the top of a job moves."""

    items: int
    same_top1: int  # items whose best passage both versions agree on
    same_top3: int  # items whose three best passages are the same three (in any order)
    spearman_per_item: float  # mean over items of the two versions' rank correlation
    spearman_per_item_min: float
    spearman: float  # over every pair of every item

    @property
    def top1(self) -> float:
        return self.same_top1 / self.items if self.items else 1.0

    @property
    def top3(self) -> float:
        return self.same_top3 / self.items if self.items else 1.0

    def summary(self) -> str:
        return (
            f"best passage agrees in {self.same_top1}/{self.items} ({self.top1:.1%}), top 3 in {self.top3:.1%}, "
            f"Spearman per item {self.spearman_per_item:.3f} (lowest {self.spearman_per_item_min:.3f}), "
            f"over all pairs {self.spearman:.4f}"
        )


@dataclass
class DiffReport:
    pairs: int
    items: int
    spearman: float  # NaN when a model scores every pair the same
    kendall: float
    right_a: int  # items version A ranks the right way round
    right_b: int
    same_order: int  # items whose passages both versions put in the same order
    same_top: int  # items whose best passage both versions agree on
    largest_changes: list[PairChange] = field(default_factory=list)
    close: CloseAgreement | None = None  # on the close candidates built from the same items

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> DiffReport:
        """The report ``dataclasses.asdict`` wrote (kept in an export's ``export.json``)."""
        changes = [PairChange(**change) for change in fields.get("largest_changes", [])]
        close = CloseAgreement(**fields["close"]) if fields.get("close") else None
        return cls(**(fields | {"largest_changes": changes, "close": close}))

    @property
    def top1_agreement(self) -> float:
        return self.same_top / self.items if self.items else 1.0

    def spearman_at_least(self, bound: float) -> bool:
        return not math.isnan(self.spearman) and self.spearman >= bound


def diff_models(a: Backend, b: Backend, items: Sequence[GoldenItem], top: int = 5, close: bool = True) -> DiffReport:
    """Both versions on ``items``; with ``close``, also on the close candidates built from them."""
    scored_a, scored_b = score_golden(a, items), score_golden(b, items)
    changes = [change for sa, sb in zip(scored_a, scored_b, strict=True) for change in _changes(sa, sb, a, b)]
    raw_a = [score for item in scored_a for score in item.all_scores()]
    raw_b = [score for item in scored_b for score in item.all_scores()]
    return DiffReport(
        pairs=len(raw_a),
        items=len(items),
        spearman=_statistic(spearmanr, raw_a, raw_b),
        kendall=_statistic(kendalltau, raw_a, raw_b),
        right_a=sum(item.ranked_right for item in scored_a),
        right_b=sum(item.ranked_right for item in scored_b),
        same_order=sum(_order(sa) == _order(sb) for sa, sb in zip(scored_a, scored_b, strict=True)),
        same_top=sum(_order(sa)[0] == _order(sb)[0] for sa, sb in zip(scored_a, scored_b, strict=True)),
        largest_changes=sorted(changes, key=lambda change: -abs(change.delta))[:top],
        close=close_agreement(a, b, close_candidates(items)) if close else None,
    )


def close_agreement(a: Backend, b: Backend, items: Sequence[CloseItem]) -> CloseAgreement:
    jobs = [(item.query, item.passages) for item in items]
    rows_a, rows_b = score_passages(a, jobs), score_passages(b, jobs)
    pairs = list(zip(rows_a, rows_b, strict=True))
    per_item = [_statistic(spearmanr, x, y) for x, y in pairs]
    defined = [value for value in per_item if not math.isnan(value)] or [math.nan]
    return CloseAgreement(
        items=len(items),
        same_top1=sum(_best(x, 1) == _best(y, 1) for x, y in pairs),
        same_top3=sum(_best(x, 3) == _best(y, 3) for x, y in pairs),
        spearman_per_item=sum(defined) / len(defined),
        spearman_per_item_min=min(defined),
        spearman=_statistic(spearmanr, [s for row in rows_a for s in row], [s for row in rows_b for s in row]),
    )


def _best(scores: list[float], count: int) -> frozenset[int]:
    return frozenset(sorted(range(len(scores)), key=lambda i: -scores[i])[:count])


def _changes(sa: GoldenScores, sb: GoldenScores, a: Backend, b: Backend) -> list[PairChange]:
    item = sa.item
    passages = [(text, True) for text in item.relevant] + [(text, False) for text in item.irrelevant]
    return [
        PairChange(item.id, item.language, text, relevant, a.normalize(score_a), b.normalize(score_b))
        for (text, relevant), score_a, score_b in zip(passages, sa.all_scores(), sb.all_scores(), strict=True)
    ]


def _order(scored: GoldenScores) -> list[int]:
    scores = scored.all_scores()
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def _statistic(test: object, x: list[float], y: list[float]) -> float:
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan  # undefined for a constant input; scipy would warn and return NaN too
    return float(test(x, y).statistic)  # type: ignore[operator]
