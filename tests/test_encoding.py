"""A cross-encoder tokenizes a job in one pass (query and documents once each, cut by token
count, joined by the tokenizer's own pair template): the same features, token for token, as
cutting each text by the tokenizer's offsets and tokenizing the pair again, on the BERT family's
WordPiece and XLM-RoBERTa's SentencePiece, for every limit a job can set."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerankq.bench.workload import make_jobs, uniform
from rerankq.core.settings import get_settings
from rerankq.worker.backends import Backend
from rerankq.worker.loading import load_backend, resolve_model
from rerankq.worker.text_windows import PairLimits

UNUSUAL = [
    "苹果公司发布了新款 iPhone 手机，搭载更快的芯片。" * 30,
    "naïve café, “quotes”, emoji 😀 and a soft\u00adhyphen " * 40,
    "x",
    "",
    "a " * 900,
]
LIMITS = [
    PairLimits(512),
    PairLimits(64),
    PairLimits(128, max_tokens_per_doc=40),
    PairLimits(96, query_share=0.3),
    PairLimits(256, query_share=0.9),
]


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-xlmr"])
def test_one_pass_encoding_equals_cutting_the_text_and_tokenizing_again(
    model: str, model_dirs: dict[str, Path]
) -> None:
    settings = get_settings()
    backend = load_backend(resolve_model(str(model_dirs[model]), None, settings), "cpu", None, "torch", settings)
    jobs = [(job.query, job.documents) for job in make_jobs(12, 16, uniform(1, 700), seed=5)]
    jobs.append(("苹果手机 " * 80 + "a long query", UNUSUAL))  # a query over its share, too
    cut = 0
    for limits in LIMITS:
        for query, documents in jobs:
            one_pass = backend.encode(query, documents, limits)
            two_pass = Backend.encode(backend, query, documents, limits)  # the text cutter's path
            assert [pair.features for pair in one_pass] == [pair.features for pair in two_pass], (model, limits)
            assert all(pair.length <= limits.max_length for pair in one_pass)
            cut += sum(pair.length == limits.max_length for pair in one_pass)
    assert cut > 100  # the premise: many pairs were cut to fit


def test_a_cut_that_keeps_the_end_still_cuts_the_text(model_dirs: dict[str, Path]) -> None:
    """SentencePiece marks the first word of a text cut mid-way as a word start, so the last
    tokens of the whole text are not the tokens of its cut end: a left cut is tokenized from the
    cut text, as before."""
    settings = get_settings()
    backend = load_backend(resolve_model(str(model_dirs["tiny-xlmr"]), None, settings), "cpu", None, "torch", settings)
    limits = PairLimits(64, direction="left")
    document = "reranking " * 200  # cut inside a word: its kept tail re-tokenizes as a new word
    query, budget = backend.cutter.fit_query("query", limits)
    (kept,) = backend.cutter.cut([document], budget, "left")
    tokenizer = backend.tokenizer  # type: ignore[attr-defined]
    whole_tail = tokenizer(document, add_special_tokens=False)["input_ids"][-budget:]
    assert tokenizer(kept, add_special_tokens=False)["input_ids"] != whole_tail  # the premise

    (pair,) = backend.encode(query, [document], limits)
    (text_cut,) = backend.encode_pairs(query, [kept], limits.max_length)
    assert pair.features == text_cut.features
