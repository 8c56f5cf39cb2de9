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

from scipy.stats import kendalltau, spearmanr

from rerankq.worker.backends import Backend
from rerankq.worker.golden import GoldenItem, GoldenScores, score_golden


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

    @property
    def top1_agreement(self) -> float:
        return self.same_top / self.items if self.items else 1.0

    def spearman_at_least(self, bound: float) -> bool:
        return not math.isnan(self.spearman) and self.spearman >= bound


def diff_models(a: Backend, b: Backend, items: Sequence[GoldenItem], top: int = 5) -> DiffReport:
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
    )


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
