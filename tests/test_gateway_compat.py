"""Stock client libraries from PyPI work against the gateway by changing only their base URL,
and every compatible endpoint returns the scores the SDK returns for the same pairs."""

from __future__ import annotations

import os

import cohere
import httpx
import pytest
from gateway_support import ALIAS, AUTH, PLAIN_KEY

from rerankq import RerankClient
from rerankq.testing.processes import GatewayProcess

os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"

pytestmark = pytest.mark.slow

QUERY = "what do cats eat"
DOCS = ["Cats eat meat and fish.", "The stock market fell today.", "Kittens drink milk.", "Paris is in France."]


@pytest.fixture
def http(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60)


def expected(client: RerankClient, normalize: bool = True) -> list[tuple[int, float]]:
    return [(r.index, r.score) for r in client.rank(QUERY, DOCS, model="tiny-bert", normalize=normalize, timeout=30)]


def approx(pairs: list[tuple[int, float]]) -> list[tuple[int, object]]:
    return [(index, pytest.approx(score, abs=1e-6)) for index, score in pairs]


def test_cohere_v1_client(gateway: GatewayProcess, client: RerankClient) -> None:
    co = cohere.Client(api_key=PLAIN_KEY, base_url=gateway.url)
    response = co.rerank(model="tiny-bert", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [(r.index, r.relevance_score) for r in response.results] == approx(expected(client)[:2])
    assert [r.document.text for r in response.results] == [DOCS[r.index] for r in response.results]
    assert response.id and response.meta.api_version.version == "1"


def test_cohere_v1_client_chunks_long_documents(gateway: GatewayProcess, client: RerankClient) -> None:
    """max_chunks_per_doc chunks; the stock client reads results that also carry span and chunks."""
    long_document = "Cats eat meat and fish. " + "The committee reviewed the annual budget in detail. " * 200
    co = cohere.Client(api_key=PLAIN_KEY, base_url=gateway.url)
    response = co.rerank(model="tiny-bert", query=QUERY, documents=[long_document, DOCS[1]], max_chunks_per_doc=4)
    expected = client.rank(
        QUERY, [long_document, DOCS[1]], model="tiny-bert", long_documents="chunk", max_chunks_per_doc=4
    )
    assert [(r.index, r.relevance_score) for r in response.results] == approx([(r.index, r.score) for r in expected])
    assert next(r for r in expected if r.index == 0).chunks == 4


def test_cohere_v2_client(gateway: GatewayProcess, client: RerankClient) -> None:
    co = cohere.ClientV2(api_key=PLAIN_KEY, base_url=gateway.url)
    response = co.rerank(model="tiny-bert", query=QUERY, documents=DOCS)
    assert [(r.index, r.relevance_score) for r in response.results] == approx(expected(client))
    assert all(0.0 <= r.relevance_score <= 1.0 for r in response.results)
    assert response.meta.api_version.version == "2"


def test_cohere_client_sees_errors_as_its_own_exceptions(gateway: GatewayProcess) -> None:
    co = cohere.ClientV2(api_key=PLAIN_KEY, base_url=gateway.url)
    with pytest.raises(cohere.NotFoundError) as info:
        co.rerank(model="no-such-model", query=QUERY, documents=DOCS)
    assert "no-such-model" in info.value.body["message"] and "tiny-bert" in info.value.body["known_models"]
    with pytest.raises(cohere.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=gateway.url).rerank(model="tiny-bert", query=QUERY, documents=DOCS)


def test_haystack_tei_ranker(gateway: GatewayProcess, client: RerankClient) -> None:
    from haystack import Document
    from haystack.components.rankers import HuggingFaceTEIRanker
    from haystack.utils import Secret

    ranker = HuggingFaceTEIRanker(url=gateway.url, token=Secret.from_token(PLAIN_KEY), top_k=3)
    ranked = ranker.run(query=QUERY, documents=[Document(content=doc) for doc in DOCS])["documents"]
    reference = expected(client)[:3]
    assert [(doc.content, doc.score) for doc in ranked] == [
        (DOCS[index], pytest.approx(score, abs=1e-6)) for index, score in reference
    ]


def test_tei_raw_scores_and_texts(http: httpx.Client, client: RerankClient) -> None:
    response = http.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True})
    assert response.status_code == 200
    hits = response.json()
    assert [(h["index"], h["score"]) for h in hits] == approx(expected(client, normalize=False))
    assert [h["text"] for h in hits] == [DOCS[h["index"]] for h in hits]
    assert len(hits) == len(DOCS)  # TEI answers every text


def test_jina_shape_with_object_documents_and_usage(http: httpx.Client, client: RerankClient) -> None:
    documents = [{"text": doc, "id": f"doc-{i}"} for i, doc in enumerate(DOCS)]
    body = {"model": "tiny-bert", "query": QUERY + " (jina)", "documents": documents, "return_documents": True}
    response = http.post("/v1/rerank", json=body).json()
    assert {r["document"]["id"] for r in response["results"]} == {d["id"] for d in documents}  # originals echoed
    assert response["usage"]["total_tokens"] > 0  # a query never seen: every pair went through the model
    reference = client.rank(QUERY + " (jina)", DOCS, model="tiny-bert", timeout=30)
    assert [r["index"] for r in response["results"]] == [r.index for r in reference]


def test_rank_fields_build_the_ranked_text(http: httpx.Client, client: RerankClient) -> None:
    documents = [{"title": "Cats", "body": DOCS[0]}, {"title": "Markets", "body": DOCS[1]}]
    body = {"model": "tiny-bert", "query": QUERY, "documents": documents, "rank_fields": ["title", "body"]}
    response = http.post("/v1/rerank", json=body).json()
    texts = [f"title: {d['title']}\nbody: {d['body']}" for d in documents]
    reference = client.rank(QUERY, texts, model="tiny-bert", timeout=30)
    assert [(r["index"], r["relevance_score"]) for r in response["results"]] == approx(
        [(r.index, r.score) for r in reference]
    )
    missing = http.post("/v1/rerank", json=body | {"rank_fields": ["title", "summary"]})
    assert missing.status_code == 422 and missing.json()["field"] == "documents[0].summary"


def test_aliases_and_hugging_face_ids_name_models(http: httpx.Client, client: RerankClient) -> None:
    by_alias = http.post("/v2/rerank", json={"model": ALIAS, "query": QUERY, "documents": DOCS}).json()
    assert [(r["index"], r["relevance_score"]) for r in by_alias["results"]] == approx(expected(client))
    # the default model's manifest names its Hugging Face id; no worker serves it here: 503 naming it
    by_hf_id = http.post("/v2/rerank", json={"model": "BAAI/bge-reranker-v2-m3", "query": QUERY, "documents": DOCS})
    assert by_hf_id.status_code == 503
    assert by_hf_id.json()["error_type"] == "no_workers" and by_hf_id.json()["model"] == "bge-reranker-v2-m3"
