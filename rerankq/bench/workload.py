"""Synthetic rerank jobs with controlled document lengths.

Words are whole-word entries of the real English WordPiece vocabulary of all-MiniLM-L6-v2, so
with the BERT-family models and shapes one word is one token and a target length in words is a
length in tokens. Each run draws fresh text (a random seed), so no score is already cached.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from rerankq.testing.model_shapes import wordpiece_folder

Lengths = Callable[[random.Random], int]


@dataclass(frozen=True)
class Job:
    query: str
    documents: list[str]

    @property
    def pairs(self) -> int:
        return len(self.documents)


@cache
def vocabulary() -> tuple[str, ...]:
    vocab = wordpiece_folder() / "vocab.txt"
    words = (line.strip() for line in vocab.read_text(encoding="utf-8").splitlines())
    return tuple(word for word in words if word.isascii() and word.isalpha() and len(word) >= 3)


def uniform(low: int, high: int) -> Lengths:
    return lambda rng: rng.randint(low, high)


def log_normal(low: int, high: int, median: int = 80, sigma: float = 0.8) -> Lengths:
    """Passage lengths as retrieval corpora have them: mostly short, a long tail, clipped."""
    return lambda rng: max(low, min(high, round(rng.lognormvariate(math.log(median), sigma))))


def make_jobs(count: int, docs_per_job: int, lengths: Lengths, seed: int | None = None) -> list[Job]:
    rng = random.Random(seed)
    words = vocabulary()
    query_lengths = uniform(4, 12)

    def text(length: int) -> str:
        return " ".join(rng.choices(words, k=length))

    return [Job(text(query_lengths(rng)), [text(lengths(rng)) for _ in range(docs_per_job)]) for _ in range(count)]


def total_pairs(jobs: list[Job]) -> int:
    return sum(job.pairs for job in jobs)
