"""Cutting texts by tokens: a query to its share of ``max_length``, a document to what fits beside
it, or a long document into overlapping windows; and the windows' scores back into one.

Every cut is a character span taken from the model tokenizer's own offsets, so each piece is
still text. A window is scored, batched and cached like any document, and a result can name the
span that scored best. The tokenizer's pair call then encodes (query, piece) exactly as it would
any pair, with ``longest_first`` truncation left as a safety net for a piece that re-tokenizes a
token longer than it was.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerankq.core.text_options import Aggregate, TextOptions

Offsets = list[tuple[int, int]]
# A UTF-8 character is at most 4 bytes and every token covers at least one byte (or one
# character): a text of c characters has at most 4c + 1 tokens, so a short one needs no counting.
_MAX_TOKENS_PER_CHAR = 4


@dataclass(frozen=True)
class PairLimits:
    """One job's limits, resolved on the worker (its default max_length, the model's limit)."""

    max_length: int
    max_tokens_per_doc: int | None = None
    direction: str = "right"
    query_share: float = 0.75

    @classmethod
    def of(cls, text: TextOptions, default_length: int, model_limit: int, query_share: float) -> PairLimits:
        length = min(text.max_length or default_length, model_limit)
        return cls(length, text.max_tokens_per_doc, text.truncation_direction, query_share)


@dataclass(frozen=True)
class Span:
    """Characters [start, end) of a document."""

    start: int
    end: int

    def of(self, text: str) -> str:
        return text[self.start : self.end]


class TextCutter:
    """The cuts one tokenizer makes. ``paired``: query and document share one sequence (a
    cross-encoder); otherwise each is encoded alone (a bi-encoder)."""

    def __init__(self, tokenizer: Any, paired: bool, overhead: int | None = None) -> None:
        """``overhead``: tokens every pair spends besides query and document (default: the
        tokenizer's special tokens; an LLM reranker's prompt template is more)."""
        self.tokenizer = tokenizer
        self.paired = paired
        self.specials = tokenizer.num_special_tokens_to_add(pair=paired) if overhead is None else overhead

    def fit_query(self, query: str, limits: PairLimits) -> tuple[str, int]:
        """The query cut to its share of ``max_length`` (keeping its start), and how many tokens
        each document has beside it (at most ``max_tokens_per_doc``)."""
        if not self.paired:
            room = max(1, limits.max_length - self.specials)
            return query, min(room, limits.max_tokens_per_doc or room)
        query_offsets = self.offsets([query])[0]
        query_most, budget = self._shares(len(query_offsets), limits)
        if len(query_offsets) > query_most:
            query = query[: query_offsets[query_most - 1][1]]
        return query, budget

    def fit_query_tokens(self, query: Any, limits: PairLimits) -> int:
        """``fit_query`` (paired) on a query already tokenized (a ``tokenizers.Encoding``, cut in
        place to its share): how many tokens each document has beside it."""
        query_most, budget = self._shares(len(query.ids), limits)
        query.truncate(query_most)
        return budget

    def _shares(self, query_tokens: int, limits: PairLimits) -> tuple[int, int]:
        """How many tokens the query may keep, and how many each document then has beside it."""
        room = max(1, limits.max_length - self.specials)
        query_most = max(1, int(room * limits.query_share))
        budget = max(1, room - min(query_tokens, query_most))
        return query_most, min(budget, limits.max_tokens_per_doc or budget)

    def cut(self, documents: Sequence[str], budget: int, direction: str) -> list[str]:
        """Each document cut to ``budget`` tokens from the right (keep the start) or the left."""
        long = [i for i, doc in enumerate(documents) if self._may_exceed(doc, budget)]
        cut = list(documents)
        for i, offsets in zip(long, self.offsets([documents[i] for i in long]), strict=True):
            if len(offsets) > budget:
                cut[i] = _kept(offsets, budget, direction, len(documents[i])).of(documents[i])
        return cut

    def windows(self, document: str, budget: int, text: TextOptions, most: int) -> list[Span]:
        """The document's windows of ``chunk_tokens`` (at most ``budget``) tokens overlapping by
        ``chunk_overlap``; at most ``most``, from the end kept by ``truncation_direction``."""
        size = min(text.chunk_tokens or budget, budget)
        if not self._may_exceed(document, size):
            return [Span(0, len(document))]
        offsets = self.offsets([document])[0]
        if text.max_tokens_per_doc and len(offsets) > text.max_tokens_per_doc:
            keep = text.max_tokens_per_doc
            offsets = offsets[:keep] if text.truncation_direction == "right" else offsets[-keep:]
        if len(offsets) <= size:
            return [Span(offsets[0][0], offsets[-1][1]) if offsets else Span(0, len(document))]
        ranges = token_windows(len(offsets), size, min(text.chunk_overlap, size - 1))
        ranges = ranges[:most] if text.truncation_direction == "right" else ranges[-most:]
        return [Span(offsets[start][0], offsets[end - 1][1]) for start, end in ranges]

    def offsets(self, texts: Sequence[str]) -> list[Offsets]:
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [[(int(start), int(end)) for start, end in offsets] for offsets in encoded["offset_mapping"]]

    def _may_exceed(self, text: str, tokens: int) -> bool:
        return len(text) * _MAX_TOKENS_PER_CHAR + 1 > tokens


def token_windows(tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) of ``size`` (the last may be shorter) stepping by size - overlap,
    covering all ``tokens``."""
    if tokens <= size:
        return [(0, tokens)]
    step = size - overlap
    return [(start, min(start + size, tokens)) for start in range(0, tokens - overlap, step)]


def aggregate(scores: Sequence[float], how: Aggregate) -> tuple[float, int]:
    """A document's score from its windows' scores, and the window its result names (the best
    one; for ``first``, the first)."""
    best = max(range(len(scores)), key=scores.__getitem__)
    if how == "max":
        return scores[best], best
    if how == "mean":
        return statistics.fmean(scores), best
    return scores[0], 0


def _kept(offsets: Offsets, budget: int, direction: str, length: int) -> Span:
    """The kept part of a text of ``length`` characters and more than ``budget`` tokens."""
    if direction == "left":
        return Span(offsets[-budget][0], length)
    return Span(0, offsets[budget - 1][1])
