"""Long documents: windows and their overlap, each aggregation against a direct computation over
the windows, the best window's span, truncation sides, long mode on a tiny model with a long
position table (and the out-of-memory path under it), and the limits on absurd input."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from gateway_support import AUTH
from hypothesis import given
from hypothesis import strategies as st
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer

from rerankq import InvalidRequest, RequestTooLarge, RerankClient
from rerankq.testing.model_shapes import build_tiny_xlm_roberta
from rerankq.testing.processes import GatewayProcess, running_workers
from rerankq.worker.text_windows import token_windows

pytestmark = pytest.mark.usefixtures("workers")
QUERY = "how do rerankers read long documents"
FILLER = "The committee met on Tuesday to review the budget for the coming year and agreed on most items. "


def long_text(words: int, seed: int = 0) -> str:
    return " ".join(
        f"{['river', 'budget', 'engine', 'garden', 'signal'][(i + seed) % 5]}{i % 37}" for i in range(words)
    )


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def tokenizer(model_dirs: dict[str, Path]):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(model_dirs["tiny-bert"])


@pytest.fixture(scope="module")
def reference(model_dirs: dict[str, Path]) -> CrossEncoder:
    return CrossEncoder(str(model_dirs["tiny-bert"]), device="cpu", max_length=512)


def predict(reference: CrossEncoder, query: str, texts: list[str]) -> list[float]:
    raw = reference.predict([(query, text) for text in texts], activation_fn=torch.nn.Identity())
    return [sigmoid(float(x)) for x in raw]


def expected_windows(tokenizer, text: str, size: int, overlap: int, most: int) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """The documented rule, written out: windows of `size` tokens stepping by size - overlap."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans, start = [], 0
    while True:
        end = min(start + size, len(offsets))
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end == len(offsets):
            return spans[:most]
        start += size - overlap


# --- windows ----------------------------------------------------------------------------------


@given(tokens=st.integers(1, 3000), size=st.integers(1, 600), data=st.data())
def test_token_windows_cover_everything_and_overlap_exactly(tokens: int, size: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    windows = token_windows(tokens, size, overlap)
    assert windows[0][0] == 0 and windows[-1][1] == tokens
    assert all(0 < end - start <= size for start, end in windows)
    for (_, previous_end), (start, _) in itertools.pairwise(windows):
        assert previous_end - start == overlap  # neighbours share exactly `overlap` tokens
    assert len({start for start, _ in windows}) == len(windows)


def test_window_boundaries_on_the_model_tokenizer(client: RerankClient, tokenizer, reference: CrossEncoder) -> None:  # type: ignore[no-untyped-def]
    document = long_text(300)
    result = client.rank(
        QUERY,
        [document],
        model="tiny-bert",
        long_documents="chunk",
        chunk_tokens=40,
        chunk_overlap=10,
        max_chunks_per_doc=100,
        cache=False,
    )[0]
    spans = expected_windows(tokenizer, document, 40, 10, 100)
    assert result.chunks == len(spans) > 5
    scores = predict(reference, QUERY, [document[start:end] for start, end in spans])
    assert result.span == spans[max(range(len(scores)), key=scores.__getitem__)]
    for start, end in spans:  # each window holds at most 40 tokens of the document
        assert len(tokenizer(document[start:end], add_special_tokens=False)["input_ids"]) <= 40


@pytest.mark.parametrize("aggregate", ["max", "mean", "first"])
def test_each_aggregation_equals_a_direct_computation(
    client: RerankClient,
    tokenizer,
    reference: CrossEncoder,
    aggregate: str,  # type: ignore[no-untyped-def]
) -> None:
    documents = [long_text(200, seed=1), "a short document about rerankers", long_text(120, seed=3)]
    results = client.rank(
        QUERY,
        documents,
        model="tiny-bert",
        long_documents="chunk",
        chunk_tokens=48,
        chunk_overlap=12,
        max_chunks_per_doc=4,
        aggregate=aggregate,
        cache=False,  # type: ignore[arg-type]
    )
    for result in results:
        document = documents[result.index]
        spans = expected_windows(tokenizer, document, 48, 12, 4)
        scores = predict(reference, QUERY, [document[start:end] for start, end in spans])
        best = max(range(len(scores)), key=scores.__getitem__)
        expected = {"max": max(scores), "mean": statistics.fmean(scores), "first": scores[0]}[aggregate]
        assert result.score == pytest.approx(expected, abs=1e-5)
        assert result.span == spans[0 if aggregate == "first" else best] and result.chunks == len(spans)


def test_the_best_window_holds_the_answer(client: RerankClient) -> None:
    """Real weights (all-MiniLM-L6-v2): the one sentence about Paris, buried in filler, is the span."""
    answer = "Paris is the capital and the largest city of France."
    document = FILLER * 12 + answer + " " + FILLER * 12
    result = client.rank(
        "what is the capital of France",
        [document],
        model="all-minilm-l6-v2",
        long_documents="chunk",
        chunk_tokens=24,
        max_chunks_per_doc=60,
        cache=False,
    )[0]
    assert result.span is not None and "Paris" in document[result.span[0] : result.span[1]]


def test_windows_are_cached_like_any_text(client: RerankClient) -> None:
    document = long_text(250, seed=7) + f" {math.pi}"
    options = {"model": "tiny-bert", "long_documents": "chunk", "chunk_tokens": 50, "max_chunks_per_doc": 20}
    first = client.submit(QUERY, [document], **options).result(timeout=60)  # type: ignore[arg-type]
    again = client.submit(QUERY, [document], aggregate="mean", **options).result(timeout=60)  # type: ignore[arg-type]
    assert first.stats.pairs == first.results[0].chunks and again.stats.pairs == 0  # every window from the cache
    assert again.stats.cache_hits == 1


# --- truncation -------------------------------------------------------------------------------


def test_truncation_keeps_the_start_or_the_end(client: RerankClient, tokenizer, reference: CrossEncoder) -> None:  # type: ignore[no-untyped-def]
    document = long_text(400, seed=2)
    offsets = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    right = client.rank(QUERY, [document], model="tiny-bert", max_tokens_per_doc=30, cache=False)[0]
    left = client.rank(
        QUERY, [document], model="tiny-bert", max_tokens_per_doc=30, truncation_direction="left", cache=False
    )[0]
    head, tail = document[: offsets[29][1]], document[offsets[-30][0] :]
    assert [right.score, left.score] == pytest.approx(predict(reference, QUERY, [head, tail]), abs=1e-5)


def test_a_query_longer_than_max_length_keeps_room_for_the_document(client: RerankClient) -> None:
    """Documented truncation: the query keeps its first 3/4 of max_length, the document the rest."""
    handle = client.submit(long_text(2000), ["one document", "another"], model="tiny-bert", max_length=64, cache=False)
    result = handle.result(timeout=60)
    assert all(math.isfinite(doc.score) for doc in result.results)
    assert result.stats.tokens <= 2 * 64
    scores = {doc.index: doc.score for doc in result.results}
    assert scores[0] != scores[1]  # the documents were read, not truncated away


# --- limits -----------------------------------------------------------------------------------


def test_absurd_input_gets_a_clear_error(client: RerankClient) -> None:
    with pytest.raises(RequestTooLarge, match=r"documents\[0\].*at most 100000 characters"):
        client.build(QUERY, ["x" * 10_000_000])
    with pytest.raises(InvalidRequest, match="query: must hold visible text"):
        client.build("\u200b\u200d\u2060", ["doc"])
    with pytest.raises(RequestTooLarge, match=r"max_chunks_per_doc.*at most 10000 pairs"):
        client.build(QUERY, ["doc"] * 1000, long_documents="chunk", max_chunks_per_doc=11)
    with pytest.raises(InvalidRequest, match=r"chunk_overlap.*smaller than chunk_tokens"):
        client.build(QUERY, ["doc"], long_documents="chunk", chunk_tokens=32, chunk_overlap=32)
    with pytest.raises(InvalidRequest, match="invalid aggregate"):
        client.build(QUERY, ["doc"], aggregate="median")  # type: ignore[typeddict-item]
    with pytest.raises(InvalidRequest, match="invalid max_length"):
        client.build(QUERY, ["doc"], max_length=2)


def test_zero_width_and_huge_documents_are_scored_within_bounds(client: RerankClient) -> None:
    huge = long_text(14_000)[:100_000]  # the largest document allowed
    result = client.submit(
        QUERY, ["\u200b\u200b", "", huge], model="tiny-bert", long_documents="chunk", cache=False
    ).result(timeout=120)
    by_index = {doc.index: doc for doc in result.results}
    assert all(math.isfinite(doc.score) for doc in result.results)
    assert by_index[2].chunks == 10  # RERANKQ_MAX_CHUNKS_PER_DOC: the rest of the text is not read
    assert result.stats.pairs == 12


# --- gateway ----------------------------------------------------------------------------------


@pytest.fixture
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60) as client:
        yield client


def test_gateway_maps_cohere_options(http: httpx.Client, client: RerankClient) -> None:
    documents = [long_text(300, seed=4), "short"]
    v1 = http.post(
        "/v1/rerank", json={"model": "tiny-bert", "query": QUERY, "documents": documents, "max_chunks_per_doc": 3}
    ).json()
    chunked = client.rank(QUERY, documents, model="tiny-bert", long_documents="chunk", max_chunks_per_doc=3)
    assert [(r["index"], r["relevance_score"], tuple(r["span"]), r["chunks"]) for r in v1["results"]] == [
        (r.index, pytest.approx(r.score, abs=1e-5), r.span, r.chunks) for r in chunked
    ]
    v2 = http.post(
        "/v2/rerank", json={"model": "tiny-bert", "query": QUERY, "documents": documents, "max_tokens_per_doc": 16}
    ).json()
    truncated = client.rank(QUERY, documents, model="tiny-bert", max_tokens_per_doc=16)
    assert [(r["index"], r["relevance_score"]) for r in v2["results"]] == [
        (r.index, pytest.approx(r.score, abs=1e-5)) for r in truncated
    ]
    assert "span" not in v2["results"][0]
    tei = http.post("/rerank", json={"query": QUERY, "texts": documents, "truncation_direction": "Left"})
    left = client.rank(QUERY, documents, model="tiny-bert", truncation_direction="left")
    assert tei.status_code == 200 and [(h["index"], h["score"]) for h in tei.json()] == [
        (r.index, pytest.approx(r.score, abs=1e-5)) for r in left
    ]


# --- long mode --------------------------------------------------------------------------------


@pytest.mark.slow
def test_long_mode_on_a_long_position_table_and_its_oom_path(tmp_path: Path, client: RerankClient) -> None:
    """A tiny XLM-R with 4096 positions (bge-reranker-v2-m3's family): a job asking for 4096 tokens
    per pair reads them all; two such pairs overflow an (injected) memory limit, the batch splits,
    and the scores are the reference's."""
    folder = build_tiny_xlm_roberta(tmp_path / "tiny-long", max_position_embeddings=4098)
    documents = [long_text(350, seed=5), long_text(320, seed=6)]  # ~2500 tokens each
    env = {"RERANKQ_FAULT_OOM_BATCH_TOKENS": "5000"}
    with running_workers(str(folder), tmp_path / "logs", 1, "--name", "tiny-long", env=env) as (worker,):
        result = client.submit(QUERY, documents, model="tiny-long", max_length=4096, cache=False).result(timeout=120)
        capped = client.submit(QUERY, documents, model="tiny-long", max_length=100_000, cache=False).result(timeout=120)
        log = worker.log()
    reference = CrossEncoder(str(folder), device="cpu", max_length=4096)
    expected = predict(reference, QUERY, documents)
    assert 4096 > result.stats.tokens / 2 > 2000  # far past 512, all of each document read
    assert [doc.score for doc in sorted(result.results, key=lambda d: d.index)] == pytest.approx(expected, abs=1e-5)
    assert [d.score for d in capped.results] == pytest.approx([d.score for d in result.results], abs=1e-6)
    assert '"event": "oom"' in log  # the two long pairs did not fit together: split, then served
