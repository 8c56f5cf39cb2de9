"""Close candidates: rerank jobs whose passages score close together, as first-stage retrieval
returns them, built offline from a golden set.

The golden items pair a relevant passage with an obviously irrelevant one; any reranker, and any
int8 copy of it, ranks those the same way. What users send is harder: a handful of passages that
all match the query, where a small score change reorders the top. Each close item holds a golden
item's relevant passage, six near-duplicates of it with 5 %, 10 %, ... 30 % of their words
replaced by words of other passages in the same language (a ladder of ever less relevant
passages, neighbours close together) and the item's irrelevant passage. Sixteen variants per
golden item (more where the items are few: at least 200 jobs), each replacing other words; on
all-MiniLM-L6-v2 their normalised scores spread with a median standard deviation of 0.045 per
job, as the first-stage candidates that showed int8 changing the top (0.044) did. Deterministic
(seeded by item id and variant), so a gate measures the same jobs on every start. Chinese or
Japanese text, and any without spaces, is edited character by character.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from rerankq.worker.golden import GoldenItem

VARIANTS_PER_ITEM = 16
AT_LEAST = 200  # jobs, whatever the number of golden items: more variants per item when there are few
NEAR_DUPLICATES = 6
REPLACED_PER_STEP = 0.05  # the share of words the next near-duplicate down the ladder replaces


@dataclass(frozen=True)
class CloseItem:
    """One job of close candidates: the query and its passages (the first is the golden item's
    relevant passage; which one ranks first is for the models to say)."""

    id: str
    query: str
    passages: list[str]


def close_candidates(items: Sequence[GoldenItem], at_least: int = AT_LEAST) -> list[CloseItem]:
    """Close items for each golden item in turn: 16 each, or more where that makes fewer than
    ``at_least`` jobs (an English-only model's 8 shipped items give 25 each, 200 jobs)."""
    variants = max(VARIANTS_PER_ITEM, -(-at_least // max(1, len(items))))
    pools: dict[str, list[str]] = {}  # words to borrow, from passages in the item's language
    for item in items:
        words = (token for text in item.relevant for token in _tokens(text) if not token.isspace())
        pools.setdefault(item.language, []).extend(words)
    return [_close_item(item, variant, pools[item.language]) for item in items for variant in range(variants)]


def _close_item(item: GoldenItem, variant: int, pool: Sequence[str]) -> CloseItem:
    rng = random.Random(f"{item.id}/{variant}")
    relevant = item.relevant[variant % len(item.relevant)]
    tokens = _tokens(relevant)
    near = [
        _join(_replaced(tokens, step * REPLACED_PER_STEP, rng, pool), relevant)
        for step in range(1, NEAR_DUPLICATES + 1)
    ]
    irrelevant = item.irrelevant[variant % len(item.irrelevant)]
    return CloseItem(f"{item.id}~{variant}", item.query, [relevant, *near, irrelevant])


def _replaced(tokens: list[str], share: float, rng: random.Random, pool: Sequence[str]) -> list[str]:
    """``tokens`` with ``share`` of their words (at least one) replaced by words drawn from ``pool``
    other than the one replaced, so each near-duplicate differs from the passage; spaces stay."""
    edited = list(tokens)
    words = [at for at, token in enumerate(tokens) if not token.isspace()]
    for at in rng.sample(words, min(len(words), max(1, round(len(words) * share)))):
        others = [word for word in pool if word != tokens[at]]
        edited[at] = rng.choice(others) if others else edited[at]
    return edited


def _tokens(text: str) -> list[str]:
    return list(text) if _by_character(text) else text.split()


def _join(tokens: list[str], like: str) -> str:
    return ("" if _by_character(like) else " ").join(tokens)


def _by_character(text: str) -> bool:
    """Chinese and Japanese text: words are not spaced (a Latin word inside is edited as letters)."""
    return " " not in text or any("\u3040" <= char <= "\u9fff" for char in text)
